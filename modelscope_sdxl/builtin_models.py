"""How the command line and batch runs name models: a hub id, a local folder, or a built-in word.

The built-in models:

- ``mini`` (the default): the small SDXL base + refiner trained to draw flat shapes, shipped inside
  the package (``modelscope_sdxl/mini_model``, docs/mini-model.md). It draws what its prompt asks.
- ``tiny``: an SDXL-shaped pair with random weights (``tiny_models``), built on first use under
  :func:`default_cache_dir`. It exercises the whole pipeline in little time but draws noise.

Nothing here imports torch: the names are needed to parse a command line.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

MINI_MODEL = 'mini'
TINY_MODEL = 'tiny'
DEFAULT_MODEL = MINI_MODEL
# What a PNG records besides the parameters: where its model came from.
SOURCE_KEYS = ('model', 'model_revision', 'refiner', 'refiner_revision')


def default_cache_dir() -> str:
    """Where built models live: $MODELSCOPE_SDXL_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/modelscope_sdxl."""
    return os.environ.get('MODELSCOPE_SDXL_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'modelscope_sdxl')


def _mini_model_folder() -> str:
    from .mini_model import mini_model_dir

    return mini_model_dir()


def _tiny_model_folder() -> str:
    from .batch import _flock
    from .tiny_models import build_tiny_sdxl

    root = os.path.join(default_cache_dir(), TINY_MODEL)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    # Processes on one machine share the cache: one builds, the others wait and reuse it.
    with _flock(root + '.lock'):
        base_dir, _ = build_tiny_sdxl(root)
    return base_dir


#: name -> function returning the model's base folder.
BUILTIN_MODELS: Dict[str, Callable[[], str]] = {MINI_MODEL: _mini_model_folder, TINY_MODEL: _tiny_model_folder}
#: One line per built-in model, for --help texts.
BUILTIN_HELP = ("'mini' (default) draws shapes from prompts such as 'a red circle on a blue background', "
                "offline, in well under a second; 'tiny' has random weights and draws noise")


def builtin_model_folder(name: str) -> str:
    """The absolute base folder of a built-in model (building it first if it must be)."""
    return os.path.abspath(BUILTIN_MODELS[name]())


def looks_local(ref: str) -> bool:
    """Whether `ref` names a local folder rather than a hub id (loading.is_local_reference's rule,
    without importing torch to parse a command line)."""
    return os.path.isabs(ref) or ref.startswith(('.', '~')) or os.path.isdir(ref)


def model_record(ref: Optional[str]) -> Optional[str]:
    """A model or refiner reference that means the same from any working directory: a built-in name,
    'none', a hub id, or an absolute folder. PNGs record it; Ray workers are given it."""
    if ref is None or ref in BUILTIN_MODELS or ref.lower() == 'none' or not looks_local(ref):
        return ref
    return os.path.abspath(os.path.expanduser(ref))


def source_record(model: Optional[str], revision: Optional[str], refiner: Optional[str],
                  refiner_revision: Optional[str]) -> Dict[str, Any]:
    """What a PNG records besides its parameters, so that ``--from-png`` finds the same model again."""
    values = (model_record(model), revision, model_record(refiner), refiner_revision)
    return {k: v for k, v in zip(SOURCE_KEYS, values) if v is not None}
