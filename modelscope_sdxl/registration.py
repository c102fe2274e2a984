"""Make ModelScope find this package's model and pipeline by name without importing them first.

ModelScope builds a model or pipeline from its registry name (``model.type`` / ``pipeline.type``
in configuration.json) through ``modelscope.utils.registry.build_from_cfg``, which first calls
``LazyImportModule.import_module((REGISTRY, task, name))``: that looks the name up in ModelScope's
AST index (the prebuilt map of every registered class to its module) and imports the module, whose
``register_module`` decorator then registers the class. ModelScope's own models and pipelines are
registered this way, lazily.

:func:`install` adds this package's two names to that index, pointing at ``modelscope_sdxl.model``
and ``modelscope_sdxl.pipeline``. It imports nothing heavy: when ModelScope's index module
(``modelscope.utils.import_utils``, which imports torch) is not loaded yet, a one-shot import hook
adds the entries the moment it is. So ``import modelscope_sdxl`` and the ``modelscope`` command's
plugin stay light, and torch, diffusers and ``modelscope.pipelines`` are imported only when a
pipeline is actually built.
"""
from __future__ import annotations

import importlib.abc
import os
import sys
import threading
from typing import Any, Dict, Tuple

from .names import MODEL_TYPE, PIPELINE_TYPE, TASK

#: ModelScope module that holds the AST index (``LazyImportModule``).
INDEX_MODULE = 'modelscope.utils.import_utils'
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: (registry, task, name) -> the module whose import registers that name.
LAZY_MODULES: Dict[Tuple[str, str, str], str] = {
    ('MODELS', TASK, MODEL_TYPE): 'modelscope_sdxl.model',
    ('PIPELINES', TASK, PIPELINE_TYPE): 'modelscope_sdxl.pipeline',
}
_MARK = '_modelscope_sdxl_entries'
_lock = threading.Lock()


def add_index_entries(index: Dict[str, Any]) -> None:
    """Add this package's names to a loaded AST index; entries already there are left alone."""
    entries = index.get('index')
    if not isinstance(entries, dict):
        return
    for key, module in LAZY_MODULES.items():
        if key not in entries:
            entries[key] = {'filepath': os.path.join(_PACKAGE_DIR, module.rsplit('.', 1)[1] + '.py'),
                            'imports': [], 'module': module}


def _patch(import_utils: Any) -> bool:
    """Make ``LazyImportModule.get_ast_index`` return an index with our entries. False if the
    ModelScope in use has no such index (then only importing the classes registers them)."""
    cls = getattr(import_utils, 'LazyImportModule', None)
    current = getattr(cls, '__dict__', {}).get('get_ast_index')
    original = getattr(current, '__func__', None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    def get_ast_index() -> Dict[str, Any]:
        index = original()
        add_index_entries(index)
        return index

    setattr(get_ast_index, _MARK, True)
    get_ast_index.__wrapped__ = original  # type: ignore[attr-defined]
    get_ast_index.__doc__ = original.__doc__
    cls.get_ast_index = staticmethod(get_ast_index)
    if getattr(cls, '_AST_INDEX', None) is not None:
        add_index_entries(cls._AST_INDEX)
    return True


class _IndexHook(importlib.abc.MetaPathFinder):
    """One-shot import hook: patches ModelScope's index module right after it executes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != INDEX_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, 'exec_module', None)
        if exec_module is None:
            return None

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _remove_hook()
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


def _remove_hook() -> None:
    with _lock:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _IndexHook)]


def install() -> None:
    """Register this package's model and pipeline names with ModelScope, lazily (idempotent)."""
    with _lock:
        module = sys.modules.get(INDEX_MODULE)
        if module is None:
            if not any(isinstance(f, _IndexHook) for f in sys.meta_path):
                sys.meta_path.insert(0, _IndexHook())
            return
    _patch(module)


def is_installed() -> bool:
    """True when ModelScope's index module is loaded and knows our names, or will be patched on load."""
    module = sys.modules.get(INDEX_MODULE)
    if module is None:
        return any(isinstance(f, _IndexHook) for f in sys.meta_path)
    current = module.LazyImportModule.__dict__.get('get_ast_index')
    return bool(getattr(getattr(current, '__func__', None), _MARK, False))

