"""Older import path of ``run_batch``; the batch command lives in :mod:`modelscope_sdxl.cli.batch`."""
from .cli.batch import BatchError, BatchResult, run_batch

__all__ = ['run_batch', 'BatchResult', 'BatchError']
