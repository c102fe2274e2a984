"""The mini model: a small SDXL base + refiner trained to draw flat shapes, shipped with this package.

The layer that makes and checks it: ``scenes`` (its world: prompts, drawings, reading pixels back),
``sdxl_folders`` (SDXL-shaped hub-layout folders, also the tiny random-weight model's), ``train``
(``python -m modelscope_sdxl.mini.train``) and ``quality`` (``python -m modelscope_sdxl.mini.quality``).

``model/base/`` and ``model/refiner/`` are hub-layout folders (diffusers components plus
configuration.json); the base's configuration.json names ``../refiner``, so::

    pipeline(task=Tasks.text_to_image_synthesis, model=mini_model_dir(), device='cpu')

loads both stages. What it draws and how it was trained: docs/mini-model.md;
the script that made it: ``python -m modelscope_sdxl.mini.train``.
"""
import os

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'model')


def mini_model_dir() -> str:
    """Folder of the mini base model (pass it as ``model=``)."""
    return os.path.join(_HERE, 'base')


def mini_refiner_dir() -> str:
    """Folder of the mini refiner (the base's configuration.json already names it)."""
    return os.path.join(_HERE, 'refiner')
