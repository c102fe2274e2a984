"""Older import path of the mini model's folders; they live in :mod:`modelscope_sdxl.mini`."""
from .mini import mini_model_dir, mini_refiner_dir

__all__ = ['mini_model_dir', 'mini_refiner_dir']
