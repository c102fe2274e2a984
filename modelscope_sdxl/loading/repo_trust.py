"""What a model repo's own configuration.json may decide, and what only the caller may.

ModelScope merges configuration.json's ``model`` section and the caller's keyword arguments into one
set of arguments for :class:`~modelscope_sdxl.model.SDXLModel`, so the model cannot tell by itself
whether ``allow_pickle=True`` or ``refiner='/etc'`` came from the person calling or from a repo
downloaded from the hub. The rules:

- ``allow_pickle``: only the caller opts in (``pipeline(..., allow_pickle=True)``, ``SDXLModel(...,
  allow_pickle=True)``, ``--allow-pickle``); a repo's ``model.allow_pickle`` is ignored, with a warning.
- ``refiner``: the caller may name any hub id or folder; a repo may name hub ids and folders inside
  itself (for a local folder: beside it, as the shipped mini model's ``../refiner``), never an
  absolute path, a home path or a folder elsewhere.

The pipeline wraps the caller's values in :class:`FromCaller`, which JSON cannot produce; a plain
value equal to the one in configuration.json is taken as the repo's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+\Z')


@dataclasses.dataclass(frozen=True)
class FromCaller:
    """A model argument the caller gave, as opposed to one read from configuration.json."""
    value: Any


def from_caller(model: Any, model_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The pipeline's model arguments for ModelScope's builder, with the caller's choices marked
    (allow_pickle always, so that the repo's own value is overridden even when the caller gave none)."""
    kwargs = dict(model_kwargs)
    if not isinstance(model, str):
        return kwargs
    kwargs['allow_pickle'] = FromCaller(kwargs.get('allow_pickle', False))
    if 'refiner' in kwargs:
        kwargs['refiner'] = FromCaller(kwargs['refiner'])
    return kwargs


def configured_model_args(model_dir: str) -> Dict[str, Any]:
    """configuration.json's ``model`` section ({} when there is none or it cannot be read)."""
    try:
        with open(os.path.join(model_dir, 'configuration.json'), encoding='utf-8') as f:
            section = json.load(f).get('model')
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}
    return section if isinstance(section, dict) else {}


def origin(name: str, received: Any, model_dir: str) -> Tuple[Any, bool]:
    """(value, True when it is the repo's configuration.json value rather than the caller's)."""
    if isinstance(received, FromCaller):
        return received.value, False
    section = configured_model_args(model_dir)
    if name in section and section[name] == _plain(received):
        return received, True
    return received, False


def _plain(value: Any) -> Any:
    # ModelScope hands the section on as ConfigDicts; compare them as the JSON they were.
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def caller_allow_pickle(allow_pickle: Any, model_dir: str) -> Any:
    """The caller's allow_pickle; a repo's own ``model.allow_pickle`` is ignored."""
    value, from_repo = origin('allow_pickle', allow_pickle, model_dir)
    if from_repo:
        if value is True:
            logger.warning('%s sets model.allow_pickle, which is ignored: only the caller can allow pickle '
                           'weights (allow_pickle=True, or --allow-pickle)',
                           os.path.join(os.path.basename(os.path.normpath(model_dir)), 'configuration.json'))
        return False
    return value


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _cache_roots() -> List[str]:
    roots = []
    try:
        from modelscope.hub.utils import utils as hub_utils
    except ImportError:  # pragma: no cover - modelscope is a dependency
        return roots
    for name in ('_modelscope_hub_cache_root', 'get_cache_dir'):
        function = getattr(hub_utils, name, None)
        if function is not None:
            roots.append(os.path.realpath(str(function())))
    return roots


def hub_repo_root(folder: str) -> Optional[str]:
    """For a folder inside ModelScope's download cache, the folder of its repo there (the parent of
    ``snapshots/`` where files link to blobs beside it); None for any other folder."""
    real = os.path.realpath(folder)
    for root in _cache_roots():
        if _inside(real, root):
            parts = real.split(os.sep)
            if 'snapshots' in parts[:-1]:
                return os.sep.join(parts[:len(parts) - 1 - parts[::-1].index('snapshots')])
            return real
    return None


def repo_refiner(ref: str, model_dir: str) -> str:
    """A refiner reference from the repo's own configuration.json: a hub id, or an absolute path to a
    folder inside the repo (beside it for a local folder). The message quotes the value as written,
    never a resolved path."""
    where = f"configuration.json's model.refiner {ref!r}"
    allowed = 'it may name a hub id (owner/name) or a folder inside the repo'
    if os.path.isabs(ref) or ref.startswith(('~', '\\')) or re.match(r'[A-Za-z]:', ref):
        raise ValueError(f'{where} is an absolute or home path; {allowed}. Pass refiner= (or --refiner) to use '
                         'a folder of your own')
    in_hub = hub_repo_root(model_dir) is not None
    root = model_dir if in_hub else os.path.dirname(os.path.normpath(model_dir))
    candidate = os.path.normpath(os.path.join(model_dir, ref))
    if ref.startswith('.') or os.path.isdir(candidate) or not _HUB_ID.match(ref):
        if not _inside(candidate, root):
            raise ValueError(f'{where} leaves the repo; {allowed}')
        if not os.path.isdir(candidate):
            raise FileNotFoundError(f'{where} names a folder that the repo does not hold')
        return os.path.realpath(candidate)
    if os.path.exists(ref):
        raise ValueError(f'{where} looks like a hub id but is also a path here; {allowed}')
    return ref
