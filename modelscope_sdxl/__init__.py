"""SDXL base + refiner for ModelScope: ``import modelscope_sdxl`` registers the model and pipeline.

Then the model card's snippet works unchanged::

    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=MODEL, model_revision='v1.0.0')
    output = pipe({'text': 'a dog'})
    cv2.imwrite('result.png', output['output_imgs'][0])

The import is light: it adds the two names to ModelScope's index of registered classes (see
``registration.py``), and ModelScope imports ``model.py`` and ``pipeline.py`` (torch, diffusers)
the first time it builds one, as it does for its own models. ``SDXLModel`` and ``SDXLPipeline``
are imported on first access.
"""
from typing import Any

from .names import MODEL_TYPE, PIPELINE_TYPE, TASK
from .registration import install as _install_registration

__version__ = '0.1.0'
__all__ = ['SDXLModel', 'SDXLPipeline', 'MODEL_TYPE', 'PIPELINE_TYPE', 'TASK', '__version__']

_install_registration()

_LAZY = {'SDXLModel': 'model', 'SDXLPipeline': 'pipeline'}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
