"""LoRA weights chosen at pipeline construction, fused into the networks once.

Fusing costs nothing per step, and since LoRAs are fixed for the pipeline's
life, every call sees the same weights. Loading and fusing are diffusers' own
(``load_lora_weights``, ``set_adapters``, ``fuse_lora``; peft does the work).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from ..hub import resolve_folder

LORA_TARGETS = ('base', 'refiner', 'both')


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA: a .safetensors file, a folder holding one, or a hub id; its scale and target stage(s)."""
    path: str
    scale: float = 1.0
    target: str = 'base'
    revision: Optional[str] = None
    weight_name: Optional[str] = None


def _spec(entry: Any, index: int) -> LoraSpec:
    where = f'lora[{index}]'
    if isinstance(entry, str):
        entry = {'path': entry}
    elif isinstance(entry, (tuple, list)) and len(entry) == 2:
        entry = {'path': entry[0], 'scale': entry[1]}
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a path or hub id, a (path, scale) pair or a dict with 'path', "
                        f"'scale', 'target', 'revision', 'weight_name'; got {type(entry).__name__}")
    unknown = sorted(set(entry) - {'path', 'scale', 'target', 'revision', 'weight_name'})
    if unknown:
        raise ValueError(f'{where} has unknown key(s) {", ".join(unknown)}; '
                         'known: path, scale, target, revision, weight_name')
    path, scale = entry.get('path'), entry.get('scale', 1.0)
    target = entry.get('target', 'base')
    if not isinstance(path, str) or not path:
        raise TypeError(f'{where}.path must be a file, folder or hub id string, got {path!r}')
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise TypeError(f'{where}.scale must be a finite number, got {scale!r}')
    if target not in LORA_TARGETS:
        raise ValueError(f'{where}.target must be one of {", ".join(map(repr, LORA_TARGETS))}, got {target!r}')
    if not is_hub_id(path) and not os.path.exists(os.path.expanduser(path)):
        # Checked before any model loads, and never sent to the hub.
        raise FileNotFoundError(f'{where}.path {path!r}: no such file or folder '
                                f"({os.path.abspath(os.path.expanduser(path))}); a hub id has the form 'owner/name'")
    for key in ('revision', 'weight_name'):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise TypeError(f'{where}.{key} must be a string, got {entry[key]!r}')
    return LoraSpec(path=path, scale=float(scale), target=target, revision=entry.get('revision'),
                    weight_name=entry.get('weight_name'))


def parse_lora(lora: Any) -> List[LoraSpec]:
    """`lora=` as given to the pipeline -> validated specs. Accepts one entry or a list of them."""
    if lora is None:
        return []
    entries: Sequence[Any] = [lora] if isinstance(lora, (str, dict)) or (
        isinstance(lora, tuple) and len(lora) == 2 and isinstance(lora[1], numbers.Real)) else lora
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f'lora must be a path, hub id, dict or a list of them, got {type(lora).__name__}')
    return [_spec(e, i) for i, e in enumerate(entries)]


# A ModelScope hub id: owner/name, neither part a path word, and no weights file suffix.
_HUB_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$')
_WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.ckpt', '.pt', '.pth')


def is_hub_id(ref: str) -> bool:
    """True for ``owner/name``; a path (``x.safetensors``, ``loras/x.safetensors``, ``./x``, ``a/b/c``) is not one."""
    return bool(_HUB_ID.match(ref)) and not ref.lower().endswith(_WEIGHT_SUFFIXES)


def _locate(spec: LoraSpec, allow_pickle: bool) -> tuple:
    """(folder, weight file name) of a LoRA: a local file or folder, or a hub id fetched through
    ModelScope's client. A local path that does not exist is an error here, never a hub request."""
    path = os.path.abspath(os.path.expanduser(spec.path))
    if os.path.isfile(path):
        folder, name = os.path.split(path)
    elif not os.path.isdir(path) and not is_hub_id(spec.path):
        raise FileNotFoundError(f'LoRA {spec.path!r}: no such file or folder ({path}); a hub id has the form '
                                "'owner/name'")
    else:
        folder = path if os.path.isdir(path) else resolve_folder(
            spec.path, spec.revision, ['*.safetensors', '*.json'] + (['*.bin'] if allow_pickle else []))
        name = spec.weight_name
        if name is None:
            weights = sorted(f for f in os.listdir(folder) if f.endswith('.safetensors'))
            if len(weights) != 1:
                raise ValueError(f'LoRA {spec.path!r}: expected one .safetensors file in {folder}, found '
                                 f'{weights or "none"}; name it with weight_name')
            name = weights[0]
    if not name.endswith('.safetensors') and not allow_pickle:
        raise ValueError(f'LoRA {spec.path!r}: {name} is not a .safetensors file; pickle weights can run code '
                         'when loaded and are refused unless allow_pickle=True')
    if not os.path.isfile(os.path.join(folder, name)):
        raise FileNotFoundError(f'LoRA {spec.path!r}: {os.path.join(folder, name)} does not exist')
    return folder, name


def apply_lora(base: Any, refiner: Optional[Any], specs: List[LoraSpec], allow_pickle: bool = False) -> None:
    """Load every LoRA into its target stage(s), weight them by scale and fuse them."""
    if not specs:
        return
    adapters: dict = {}
    for i, spec in enumerate(specs):
        if spec.target in ('refiner', 'both') and refiner is None:
            raise ValueError(f'lora[{i}] targets the refiner, and this pipeline has none')
        folder, name = _locate(spec, allow_pickle)
        pipes = {'base': [base], 'refiner': [refiner], 'both': [base, refiner]}[spec.target]
        for pipe in pipes:
            adapter = f'lora_{i}'
            try:
                pipe.load_lora_weights(folder, weight_name=name, adapter_name=adapter)
            except (ValueError, RuntimeError, KeyError) as exc:
                stage = 'base' if pipe is base else 'refiner'
                raise ValueError(f'lora[{i}] ({spec.path}) does not fit the {stage} model: {exc}') from exc
            adapters.setdefault(id(pipe), (pipe, [], []))
            adapters[id(pipe)][1].append(adapter)
            adapters[id(pipe)][2].append(spec.scale)
    for pipe, names, scales in adapters.values():
        pipe.set_adapters(names, adapter_weights=scales)
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
