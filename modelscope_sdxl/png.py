"""PNG files that remember how they were made.

Each file carries two text chunks: ``parameters``, in the form AUTOMATIC1111 writes
and many tools read (prompt, ``Negative prompt:``, then ``Steps: 30, Sampler: ..., Seed: ...``),
and ``modelscope-sdxl``, the exact JSON of the call's parameters, which
:func:`read_png_parameters` prefers so that a file regenerates the same pixels.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Optional

import numpy as np

JSON_KEY = 'modelscope-sdxl'
A1111_KEY = 'parameters'
# Our parameter names -> AUTOMATIC1111's labels.
_A1111_LABELS = {
    'num_inference_steps': 'Steps', 'scheduler': 'Sampler', 'guidance_scale': 'CFG scale', 'seed': 'Seed',
    'refiner_mode': 'Refiner mode', 'high_noise_frac': 'Refiner switch at', 'strength': 'Refiner strength',
    'guidance_rescale': 'Guidance rescale', 'clip_skip': 'Clip skip', 'aesthetic_score': 'Aesthetic score',
    'negative_aesthetic_score': 'Negative aesthetic score', 'model': 'Model', 'model_revision': 'Model revision',
    'refiner': 'Refiner', 'refiner_revision': 'Refiner revision',
}
# AUTOMATIC1111's sampler names -> ours, so files made there can be read back.
_A1111_SAMPLERS = {'Euler': 'euler', 'Euler a': 'euler_ancestral', 'DPM++ 2M': 'dpmpp_2m',
                   'DPM++ 2M Karras': 'dpmpp_2m_karras', 'DPM++ 2M SDE Karras': 'dpmpp_2m_sde_karras',
                   'DDIM': 'ddim', 'UniPC': 'unipc', 'Heun': 'heun'}


def a1111_text(parameters: Dict[str, Any]) -> str:
    """The ``parameters`` text AUTOMATIC1111 writes: prompt, negative prompt, then 'Label: value' pairs."""
    lines = [parameters.get('text', '')]
    if parameters.get('negative_prompt'):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    pairs = []
    for name, label in _A1111_LABELS.items():
        value = parameters.get(name)
        if name == 'scheduler' and value is None and 'text' in parameters:
            value = 'euler'
        if value is not None:
            pairs.append(f'{label}: {value}')
            if name == 'seed':
                pairs.append(f"Size: {parameters.get('width')}x{parameters.get('height')}")
    lines.append(', '.join(pairs))
    return '\n'.join(lines)


def parse_a1111_text(text: str) -> Dict[str, Any]:
    """Best-effort inverse of :func:`a1111_text` for files without the exact JSON chunk."""
    lines = text.strip('\n').split('\n')
    settings = lines.pop() if lines and ': ' in lines[-1] and ', ' in lines[-1] + ', ' else ''
    params: Dict[str, Any] = {}
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith('Negative prompt: '):
            in_negative = True
            line = line[len('Negative prompt: '):]
        (negative_lines if in_negative else prompt_lines).append(line)
    params['text'] = '\n'.join(prompt_lines)
    if negative_lines:
        params['negative_prompt'] = '\n'.join(negative_lines)
    labels = {label: name for name, label in _A1111_LABELS.items()}
    for item in settings.split(', '):
        label, _, value = item.partition(': ')
        if label == 'Size' and 'x' in value:
            width, height = value.split('x', 1)
            params['width'], params['height'] = int(width), int(height)
        elif label in labels:
            params[labels[label]] = _number(value)
    params['scheduler'] = _A1111_SAMPLERS.get(params.get('scheduler'), params.get('scheduler'))
    if params.get('scheduler') in ('euler', None):
        params.pop('scheduler')
    return params


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.png', dir=folder)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; a PNG gets the usual mode
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_png_parameters(path: str) -> Dict[str, Any]:
    """The parameters a PNG was made with: the exact JSON chunk, else the AUTOMATIC1111 text."""
    from PIL import Image

    with Image.open(path) as img:
        text = dict(getattr(img, 'text', {}) or img.info)
    if JSON_KEY in text:
        return json.loads(text[JSON_KEY])
    if A1111_KEY in text:
        return parse_a1111_text(text[A1111_KEY])
    raise ValueError(f'{path} carries no generation parameters (no {JSON_KEY!r} or {A1111_KEY!r} text chunk)')
