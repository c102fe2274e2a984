"""The batch's unit of work: the lines of a JSONL file as items with stable ids, and one item made.

Each line is a JSON object with the fields of a pipeline input (``{"text": "a dog", "seed": 1}``)
and an optional ``id``. The same code makes an item here and on a Ray worker (:func:`generate_item`).
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import math
import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..inputs.text_checks import lone_surrogate

if TYPE_CHECKING:
    import numpy as np

MAX_ID_LENGTH = 200
# An id used as it is in file names; other ids are turned into '<slug>-<hash>'.
_SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z')


@dataclasses.dataclass
class Item:
    """One non-blank line of the input file."""
    id: str
    line: int
    name: Optional[str] = None  # stem of the item's file names: DIR/<name>-1.png, ...
    input: Optional[Dict[str, Any]] = None  # the line's object without 'id': the pipeline input
    raw: Optional[str] = None  # the line's text, when it is not a JSON object
    error: Optional[str] = None  # why the line cannot be made, found while reading it


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not a JSON value')


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _file_name(item_id: str) -> str:
    if _SAFE_NAME.match(item_id):
        return item_id
    slug = re.sub(r'[^A-Za-z0-9._-]+', '_', item_id).strip('._-')[:60] or 'item'
    return f'{slug}-{_content_hash(item_id.encode("utf-8"))[:8]}'


def _check_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'id must be a string or an integer, got {type(value).__name__} {value!r}')
    text = str(value)
    if lone_surrogate(text) is not None:
        raise ValueError(f'id holds a lone surrogate, which is not valid Unicode: {ascii(text)}')
    if not text or len(text) > MAX_ID_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f'id must be 1 to {MAX_ID_LENGTH} characters without control characters, got {text!r}')
    return text


def _resolve_pictures(inputs: Dict[str, Any], path: str) -> Dict[str, Any]:
    """image / mask_image file paths are relative to the JSONL file; made absolute here, so the item runs
    the same from any working directory and on a Ray worker. Base64 data is left as it is."""
    import os

    from ..inputs.images import is_encoded
    from ..parameters import PICTURES

    for name in PICTURES:
        value = inputs.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value) and not is_encoded(value):
            inputs[name] = os.path.join(os.path.dirname(os.path.abspath(path)), value)
    return inputs
def unwritable(obj: Dict[str, Any]) -> Optional[str]:
    """Why a parsed line cannot be written back as JSON (so cannot be an input or a manifest record):
    a number too large for a float (``1e999`` reads as inf) or a lone surrogate (``\\ud800``), naming
    the field; None when it can."""
    stack: List[Tuple[str, Any]] = [(ascii(k), v) for k, v in obj.items()]
    stack += [(f'the key {ascii(k)}', k) for k in obj]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f'{where} is a number too large to hold (it reads as {value}); use a finite number'
        if isinstance(value, str) and lone_surrogate(value) is not None:
            return (f'{where} holds a lone surrogate ({ascii(value[lone_surrogate(value)])}), which is not '
                    'valid Unicode')
        if isinstance(value, dict):
            stack += [(f'{where}[{ascii(k)}]', v) for k, v in value.items()]
            stack += [(f'a key in {where}', k) for k in value]
        elif isinstance(value, list):
            stack += [(f'{where}[{i}]', v) for i, v in enumerate(value)]
    return None


def _usable_id(obj: Any, used: Dict[str, int]) -> Optional[str]:
    """The id of a line refused while reading it, when that id itself is fine and not taken."""
    if not isinstance(obj, dict) or 'id' not in obj:
        return None
    try:
        item_id = _check_id(obj['id'])
    except ValueError:
        return None
    return None if item_id in used else item_id


def read_items(path: str) -> List[Item]:
    """Parse the input file: one item per non-blank line, each with an id, in file order.

    The id is the line's ``id`` (a string, or an integer turned into one). A line without an id gets
    one from its content: the first 16 hex digits of the SHA-256 of its object as canonical JSON
    (sorted keys, no spaces), so it survives reordering, inserting and deleting other lines, and
    changes when the line changes; the 2nd, 3rd, ... identical line gets '-2', '-3', ... added.
    A line that is not a JSON object is identified by the hash of its bytes the same way.
    """
    with open(path, 'rb') as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    items: List[Item] = []
    used: Dict[str, int] = {}  # id -> line
    names: Dict[str, str] = {}  # file name, lower-cased (case-insensitive file systems) -> id
    repeats: Dict[str, int] = {}  # content hash -> lines seen with it

    def derived_id(content: bytes) -> str:
        digest = _content_hash(content)
        while True:
            repeats[digest] = repeats.get(digest, 0) + 1
            candidate = digest if repeats[digest] == 1 else f'{digest}-{repeats[digest]}'
            if candidate not in used:
                return candidate

    for number, raw in enumerate(data.split(b'\n'), 1):
        raw = raw.rstrip(b'\r')
        if not raw.strip():
            continue
        obj: Any = None
        error: Optional[str] = None
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError as exc:
            text, error = raw.decode('utf-8', 'replace'), f'line is not UTF-8: {exc}'
        if error is None:
            try:
                obj = json.loads(text, parse_constant=_reject_constant)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                error = f'invalid JSON: {exc}'
            except RecursionError:
                error = 'invalid JSON: it nests too deep'
            else:
                if not isinstance(obj, dict):
                    error = (f'a line must be a JSON object such as {{"text": "a dog"}}, '
                             f'got {type(obj).__name__}')
                else:
                    error = unwritable(obj)
        if error is not None:
            item_id = _usable_id(obj, used) or derived_id(raw)
            used[item_id] = number
            items.append(Item(item_id, number, raw=text, error=error))
            continue
        inputs = _resolve_pictures({k: v for k, v in obj.items() if k != 'id'}, path)
        item_id = None
        if 'id' in obj:
            try:
                item_id = _check_id(obj['id'])
                if item_id in used:
                    raise ValueError(f'id {item_id!r} is already used on line {used[item_id]}')
                name = _file_name(item_id)
                if name.lower() in names:
                    other = names[name.lower()]
                    raise ValueError(f'id {item_id!r} would name its files like id {other!r} '
                                     f'(line {used[other]}) does; file names ignore case')
            except ValueError as exc:
                error, item_id = str(exc), None
        if item_id is None:
            canonical = json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
            item_id = derived_id(canonical.encode('utf-8'))
        used[item_id] = number
        item = Item(item_id, number, input=inputs, error=error)
        if error is None:
            item.name = _file_name(item_id)
            names[item.name.lower()] = item_id
        items.append(item)
    return items


def generate_item(pipe: Any, inputs: Dict[str, Any]) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """Run one input: ({'status': 'ok', 'seed', 'seeds', 'parameters', 'seconds'}, BGR images), or
    ({'status': 'invalid' | 'failed', 'error': 'ValueError: ...'}, []).

    The pipeline refuses bad inputs with ValueError or TypeError naming the parameter: 'invalid',
    which the same line would get again. Anything else ('failed', such as running out of memory)
    may not happen again, so a rerun retries it.
    """
    start = time.perf_counter()
    try:
        output = pipe(dict(inputs))
    except Exception as exc:  # recorded for this line; the other lines go on
        status = 'invalid' if isinstance(exc, (ValueError, TypeError)) else 'failed'
        return {'status': status, 'error': f'{type(exc).__name__}: {exc}'}, []
    return ({'status': 'ok', 'seed': output['seed'], 'seeds': output['seeds'], 'parameters': output['parameters'],
             'seconds': round(time.perf_counter() - start, 3)}, list(output['output_imgs']))
