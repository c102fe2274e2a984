"""LoRAs on the command line: ``--lora PATH_OR_ID[:SCALE]`` and A1111's ``<lora:NAME:0.8>`` in prompts.

Both become the pipeline's ``lora=`` argument (``modelscope_sdxl/loading/lora.py`` loads and fuses them).
A tag names a file in ``--lora-dir`` (``NAME.safetensors``, also in its subfolders, as A1111 looks
in ``models/Lora``) and is taken out of the text that is encoded; the PNG keeps the prompt with its
tags, as A1111's do, so ``--from-png`` finds them again. A local path that does not exist is an
error here, never a hub request; only an ``owner/name`` id goes to the hub.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ..hub import is_local_reference
from .errors import CommandError

#: What a PNG records of the --lora flags, beside the parameters and SOURCE_KEYS.
LORA_KEY = 'lora'
# <lora:NAME> or <lora:NAME:SCALE>, A1111's extra-network syntax (a further ':...' is A1111's text
# encoder / UNet split, not supported here: the one scale applies to both).
_TAG = re.compile(r'<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>')
_HUB_ID = re.compile(r'^[\w.-]+/[\w.-]+$')


def looks_like_hub_id(ref: str) -> bool:
    """'owner/name' and not a path ('./x', '~/x', '/x', a file name): what may be asked of the hub."""
    return bool(_HUB_ID.match(ref)) and not is_local_reference(ref) and not ref.endswith('.safetensors')


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('LoRA')
    group.add_argument('--lora', action='append', default=None, metavar='PATH_OR_ID[:SCALE]',
                       help='a LoRA: a .safetensors file, a folder holding one, or a hub id (owner/name), with '
                       'an optional scale (default: 1.0); repeatable. Prompts may also hold <lora:NAME:SCALE>')
    group.add_argument('--lora-dir', default='.', metavar='FOLDER',
                       help='where <lora:NAME:SCALE> tags in the prompt find NAME.safetensors (default: .)')


def _scale(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f'{where}: the scale must be a number, got {text!r}') from None
    if not math.isfinite(value):
        raise CommandError(f'{where}: the scale must be a finite number, got {text!r}')
    return value


def flag_entry(value: str) -> Tuple[str, float]:
    """``--lora PATH_OR_ID[:SCALE]`` -> (path or hub id, scale); a local path must exist."""
    path, scale = value, 1.0
    head, sep, tail = value.rpartition(':')
    if sep and head and not os.path.exists(value):
        path, scale = head, _scale(tail, f'--lora {value}')
    return check_reference(path, f'--lora {value}'), scale


def check_reference(path: str, where: str) -> str:
    """A local LoRA as an absolute path (it must exist); an owner/name hub id as it is."""
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        return os.path.abspath(expanded)
    if looks_like_hub_id(path):
        return path
    raise CommandError(f'{where}: no such file or folder {path!r} (a hub LoRA is named owner/name)')


def take_tags(text: Optional[str]) -> Tuple[Optional[str], List[Tuple[str, float]]]:
    """The prompt without its <lora:...> tags (as encoded) and the tags' (name, scale)."""
    if not text:
        return text, []
    tags = [(m.group(1).strip(), _scale(m.group(2), m.group(0)) if m.group(2) else 1.0)
            for m in _TAG.finditer(text)]
    if not tags:
        return text, []
    return ' '.join(_TAG.sub(' ', text).split()), tags


def find_in_dir(name: str, lora_dir: str) -> str:
    """NAME's file in `lora_dir`: NAME, NAME.safetensors, or either in a subfolder (A1111's search)."""
    names = [name] if name.endswith('.safetensors') else [name + '.safetensors', name]
    for candidate in names:
        path = os.path.join(lora_dir, candidate)
        if os.path.isfile(path):
            return os.path.abspath(path)
    wanted = set(os.path.basename(n) for n in names)
    for root, _, files in sorted(os.walk(lora_dir)):
        for file in sorted(files):
            if file in wanted:
                return os.path.abspath(os.path.join(root, file))
    raise CommandError(f'<lora:{name}>: no {names[0]} in --lora-dir {lora_dir!r}; give the folder that holds it '
                       'with --lora-dir')


def lora_for_pipeline(params: Dict[str, Any], flags: Optional[List[str]], recorded: Any,
                      lora_dir: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(parameters to encode, the pipeline's lora= list, what the PNG records under LORA_KEY).

    `flags` are --lora values (they replace the file's `recorded` ones); tags in the prompt are
    resolved in `lora_dir` and taken out of the encoded text.
    """
    if flags is not None:
        entries = [flag_entry(v) for v in flags]
    else:
        entries = [(check_reference(str(e.get('path')), f'--from-png: lora {e!r}'), float(e.get('scale', 1.0)))
                   for e in _recorded_list(recorded)]
    record = [{'path': path, 'scale': scale} for path, scale in entries]
    encoded = dict(params)
    for key in ('text', 'prompt_2'):
        encoded[key], tags = take_tags(params.get(key))
        entries += [(find_in_dir(name, lora_dir), scale) for name, scale in tags]
        if encoded[key] is None:
            encoded.pop(key)
    return encoded, [{'path': path, 'scale': scale} for path, scale in entries], record


def _recorded_list(recorded: Any) -> List[Dict[str, Any]]:
    if recorded is None:
        return []
    def valid(entry: Any) -> bool:
        scale = entry.get('scale', 1.0) if isinstance(entry, dict) else None
        return isinstance(entry, dict) and isinstance(entry.get('path'), str) and not isinstance(scale, bool) \
            and isinstance(scale, (int, float)) and math.isfinite(scale)

    if not isinstance(recorded, list) or not all(valid(e) for e in recorded):
        raise CommandError(f"--from-png: the file's {LORA_KEY!r} must be a list of {{'path': ..., 'scale': ...}}, "
                           f'got {recorded!r}')
    return recorded
