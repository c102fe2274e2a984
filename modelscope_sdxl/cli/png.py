"""PNG files that remember how they were made.

Each file carries two text chunks: ``parameters``, in the form AUTOMATIC1111 writes
and many tools read (prompt, ``Negative prompt:``, then ``Steps: 30, Sampler: ..., Seed: ...``;
``a1111.py`` writes and reads it in A1111's words),
and ``modelscope-sdxl``, the exact JSON of the call's parameters, which
:func:`read_png_parameters` prefers so that a file regenerates the same pixels.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np

from .a1111 import a1111_text, parse_a1111_text
from .files import atomic_write

__all__ = ['a1111_text', 'parse_a1111_text', 'image_parameters', 'save_png', 'read_png_parameters']

JSON_KEY = 'modelscope-sdxl'
A1111_KEY = 'parameters'


def image_parameters(parameters: Dict[str, Any], seeds: List[int]) -> List[Dict[str, Any]]:
    """Each image's own parameters: the call's, with that image's seed and one image, so that a file
    makes exactly its own image again (image i of a call is made with its own generator)."""
    return [{**parameters, 'seed': seed, 'num_images_per_prompt': 1} for seed in seeds]


def png_bytes(image_bgr: np.ndarray, parameters: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> bytes:
    """A BGR uint8 image as the bytes of a PNG file carrying its parameters (and `extra`, e.g. the model)."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    record = {**parameters, **(extra or {})}
    info.add_text(A1111_KEY, a1111_text(record))
    info.add_text(JSON_KEY, json.dumps(record, sort_keys=True))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buffer, format='PNG', pnginfo=info)
    return buffer.getvalue()


def save_png(path: str, image_bgr: np.ndarray, parameters: Dict[str, Any],
             extra: Optional[Dict[str, Any]] = None) -> None:
    """Write a BGR uint8 image as PNG with its parameters, atomically (write, then rename)."""
    data = png_bytes(image_bgr, parameters, extra)
    atomic_write(path, lambda f: f.write(data))


def _big_int(digits: str) -> Any:
    # Python refuses to read integers of more than 4300 digits, with a message that names no field: read
    # them as the float they round to (inf), which the parameter's own check then refuses by name.
    return int(digits) if len(digits) <= 100 else float(digits)


def _load_json_chunk(data: str) -> Any:
    try:
        return json.loads(data, parse_int=_big_int)
    except RecursionError:
        raise ValueError(f'the {JSON_KEY!r} text chunk nests too deep to be generation parameters') from None
    except ValueError as exc:
        raise ValueError(f'the {JSON_KEY!r} text chunk is not valid JSON ({exc})') from exc


def read_png_parameters(path: str) -> Dict[str, Any]:
    """The parameters a PNG was made with: the exact JSON chunk, else the AUTOMATIC1111 text."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, 'text', {}) or img.info)
    except Image.DecompressionBombError as exc:
        raise ValueError(f'{path} is too large an image to open ({exc})') from exc
    if JSON_KEY in text:
        return _load_json_chunk(text[JSON_KEY])
    if A1111_KEY in text:
        return parse_a1111_text(text[A1111_KEY])
    raise ValueError(f'{path} carries no generation parameters (no {JSON_KEY!r} or {A1111_KEY!r} text chunk)')


def picture_records(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """What a PNG records of the pictures a call started from: for each of image / mask_image given as a
    file, its name and the SHA-256 of its bytes (for base64 data, the SHA-256 of the decoded bytes), so
    ``--from-png`` can say which file it needs and check the one given."""
    import hashlib
    import os

    from ..inputs.images import encoded_bytes, file_sha256
    from ..parameters import PICTURES

    records: Dict[str, Any] = {}
    for name in PICTURES:
        value = inputs.get(name)
        if not isinstance(value, str):
            continue
        data = encoded_bytes(value)
        if data is not None:
            records[name] = {'sha256': hashlib.sha256(data).hexdigest()}
        elif os.path.isfile(value):
            records[name] = {'file': os.path.basename(value), 'sha256': file_sha256(value)}
    return records
