"""The caller's own pictures (``image``, ``mask_image``): decoded and checked before any model work.

A picture may come as a BGR uint8 array (what ``cv2.imread`` gives and what the pipeline returns),
a PIL image, a file path, or base64 PNG/JPEG data (optionally a ``data:image/...;base64,`` URL) for
JSON callers such as ``modelscope server`` and batch lines. Each becomes an :class:`InputImage`
holding RGB (or, for a mask, single-channel) uint8 pixels, which diffusers then receives as a PIL
image exactly as a plain diffusers caller would pass it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# The caller passes the side limit (parameters.MAX_SIDE), so this module imports nothing of the package.
# Encoded data larger than this many bytes per allowed pixel is not a picture worth decoding.
_BYTES_PER_PIXEL = 4
_MAGIC = {b'\x89PNG\r\n\x1a\n': 'PNG', b'\xff\xd8\xff': 'JPEG'}
_DATA_URL = re.compile(r'data:image/[A-Za-z0-9.+-]+;base64,', re.ASCII)
_BASE64 = re.compile(r'[A-Za-z0-9+/=\s]+\Z', re.ASCII)
#: Set to 0 where callers are not trusted with this machine's files (``modelscope server`` sets it): then
#: a picture given as a string must be base64 data, never a path.
PATHS_ENV = 'MODELSCOPE_SDXL_PICTURE_PATHS'
ALLOWED = 'a BGR uint8 array, a PIL image, a file path or base64 PNG/JPEG data'


@dataclass(frozen=True, eq=False)
class InputImage:
    """Decoded pixels of one input: RGB (H, W, 3) for an image, (H, W) for a mask; equal by content."""
    pixels: np.ndarray = field(repr=False)
    sha256: str  # of the pixels (shape included), so equal pictures compare equal whatever their source

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_pil(self) -> Any:
        """What diffusers receives: an RGB (or, for a mask, 'L') PIL image."""
        from PIL import Image

        return Image.fromarray(self.pixels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InputImage) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


def _make(pixels: np.ndarray) -> InputImage:
    pixels = np.ascontiguousarray(pixels)
    pixels.setflags(write=False)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return InputImage(pixels, digest)


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what PNG parameters record of an input file)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def encoded_bytes(text: str, max_bytes: Optional[int] = None) -> Optional[bytes]:
    """The PNG/JPEG bytes of base64 text (or a data URL), or None when `text` is not such data (or,
    with `max_bytes`, would decode to more bytes than that)."""
    match = _DATA_URL.match(text)
    body = text[match.end():] if match else text
    if not match and (len(body) < 16 or not _BASE64.match(body[:4096])):
        return None
    if max_bytes is not None and len(body) > max_bytes * 4 // 3 + 4:
        return None
    try:
        compact = ''.join(body[:64].split())[:24]
        if not any(base64.b64decode(compact, validate=True).startswith(m) for m in _MAGIC):
            return None  # not PNG or JPEG: no need to decode the rest
        data = base64.b64decode(''.join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if any(data.startswith(m) for m in _MAGIC) else None


def is_encoded(text: str) -> bool:
    """Whether a string is base64 PNG/JPEG data rather than a file path."""
    return encoded_bytes(text) is not None


def _max_bytes(max_side: int) -> int:
    return _BYTES_PER_PIXEL * max_side * max_side


def _check_side_lengths(name: str, height: int, width: int, max_side: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f'{name} is empty ({height}x{width} pixels)')
    if height > max_side or width > max_side:
        raise ValueError(f'{name} must be at most {max_side} pixels on each side, got {height}x{width} '
                         '(height x width)')


def _open_encoded(name: str, data: bytes, origin: str, mask: bool, max_side: int) -> InputImage:
    """Decode PNG/JPEG bytes, checking the size from the header before decoding any pixel."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > _max_bytes(max_side):
        raise ValueError(f'{name}: {origin} is more than the {_max_bytes(max_side)} bytes allowed')
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ('PNG', 'JPEG'):
                raise ValueError(f'{name}: {origin} is {img.format}, not PNG or JPEG')
            _check_side_lengths(name, img.height, img.width, max_side)
            img.load()
            return _from_pil(name, img, mask, max_side)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f'{name}: {origin} is not a readable PNG or JPEG image ({exc})') from exc


def _from_pil(name: str, img: Any, mask: bool, max_side: int) -> InputImage:
    _check_side_lengths(name, img.height, img.width, max_side)
    if mask:
        return _make(np.asarray(img.convert('L')))
    return _make(np.asarray(img.convert('RGB')))


def _from_array(name: str, value: np.ndarray, mask: bool, max_side: int) -> InputImage:
    if value.dtype != np.uint8:
        raise TypeError(f'{name} must be a uint8 array (0-255, as cv2.imread gives), got dtype {value.dtype}')
    shapes = 'H x W or H x W x 3' if mask else 'H x W x 3 (BGR)'
    if not (value.ndim == 3 and value.shape[2] == 3) and not (mask and value.ndim == 2):
        raise ValueError(f'{name} must be a {shapes} uint8 array, got shape {tuple(value.shape)}')
    _check_side_lengths(name, value.shape[0], value.shape[1], max_side)
    if value.ndim == 2:
        return _make(value)
    rgb = value[:, :, ::-1]
    if mask:  # the grayscale diffusers' mask processor would make of it (PIL's 'L' conversion)
        from PIL import Image

        return _make(np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert('L')))
    return _make(rgb)


def load_picture(name: str, value: Any, max_side: int, mask: bool = False) -> InputImage:
    """Decode and check one picture given as `name` ('image' or 'mask_image'), at most `max_side`
    pixels on each side; ValueError/TypeError naming the field for anything unusable."""
    if isinstance(value, InputImage):
        _check_side_lengths(name, value.height, value.width, max_side)
        return value
    if isinstance(value, np.ndarray):
        return _from_array(name, value, mask, max_side)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with diffusers
        Image = None
    if Image is not None and isinstance(value, Image.Image):
        return _from_pil(name, value, mask, max_side)
    if isinstance(value, (bytes, bytearray)):
        return _open_encoded(name, bytes(value), 'the bytes given', mask, max_side)
    if not isinstance(value, str):
        raise TypeError(f'{name} must be {ALLOWED}, got {type(value).__name__}')
    if not value:
        raise ValueError(f'{name} must be {ALLOWED}, got an empty string')
    data = encoded_bytes(value)
    if data is not None:
        return _open_encoded(name, data, 'the base64 data', mask, max_side)
    if _DATA_URL.match(value):
        raise ValueError(f'{name}: the data URL does not hold base64 PNG or JPEG data')
    if len(value) > 4096 or '\x00' in value:
        raise ValueError(f'{name} is neither base64 PNG/JPEG data nor a file path')
    if os.environ.get(PATHS_ENV, '1') == '0':
        # A server: a caller on the network must not make it read files of its own disk.
        raise ValueError(f'{name}: file paths are not read here ({PATHS_ENV}=0, as under modelscope server); '
                         'send the picture as base64 PNG or JPEG data')
    if not os.path.isfile(value):
        raise ValueError(f'{name}: no such file {value!r}, and not base64 PNG/JPEG data')
    try:
        with open(value, 'rb') as f:
            data = f.read(_max_bytes(max_side) + 1)
    except OSError as exc:
        raise ValueError(f'{name}: cannot read {value!r}: {exc.strerror or exc}') from exc
    return _open_encoded(name, data, f'the file {value!r}', mask, max_side)

