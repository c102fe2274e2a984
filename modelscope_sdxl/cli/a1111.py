"""AUTOMATIC1111's ``parameters`` text: written in its words, read as it reads it.

A1111 (and the tools that copy it: sd-parsers, Civitai, ComfyUI importers) stores a PNG's
parameters as one text chunk::

    a castle on a hill
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.0, Seed: 7, Size: 1024x1024

The last line holds the settings only when it is made of settings: A1111's
``parse_generation_parameters`` (modules/infotext_utils.py) counts its ``Label: value`` items and
takes it as part of the prompt when there are fewer than three, so ``portrait: a man`` stays a
prompt. Values holding ``,``, ``:`` or a newline are written as JSON strings, as A1111's ``quote``
does.

Words that differ between A1111 and this package:

- Samplers. A1111 1.9+ writes ``Sampler: DPM++ 2M`` and ``Schedule type: Karras``; older versions
  wrote ``Sampler: DPM++ 2M Karras``. Both are read. ``Schedule type: Automatic`` means the
  sampler's own default in A1111 (Karras for DPM++ 2M). A pair with no equivalent here (Euler with
  Karras sigmas, an exponential schedule) is kept as text, so the command refuses it and asks for
  ``--sampler`` instead of quietly drawing with another sampler.
- Clip skip. A1111 counts the layer it stops at from the end: ``Clip skip: 1`` is the last layer,
  2 the penultimate. SDXL already conditions on the penultimate layer; diffusers' SDXL pipelines
  take ``hidden_states[-(clip_skip + 2)]``, so diffusers' ``clip_skip=1`` is A1111's 3 and
  A1111's 1 or 2 (A1111 ignores the setting for SDXL unless "Clip skip SDXL" is on) is diffusers'
  default. (For SD 1.x diffusers takes ``hidden_states[-(clip_skip + 1)]``, where A1111's 2 is
  diffusers' 1; that rule does not hold for SDXL.)
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from ..stages.schedulers import SCHEDULER_NAMES

# Our parameter names -> A1111's labels ('Sampler' and 'Clip skip' are translated, see below).
LABELS = {
    'num_inference_steps': 'Steps', 'scheduler': 'Sampler', 'guidance_scale': 'CFG scale', 'seed': 'Seed',
    'refiner_mode': 'Refiner mode', 'high_noise_frac': 'Refiner switch at', 'strength': 'Refiner strength',
    'guidance_rescale': 'Guidance rescale', 'clip_skip': 'Clip skip', 'aesthetic_score': 'Aesthetic score',
    'negative_aesthetic_score': 'Negative aesthetic score', 'model': 'Model', 'model_revision': 'Model revision',
    'refiner': 'Refiner', 'refiner_revision': 'Refiner revision', 'denoising_strength': 'Denoising strength',
}
SCHEDULE_LABEL = 'Schedule type'

#: Our sampler -> (A1111's sampler, A1111's schedule type or None for the sampler's plain schedule).
TO_A1111: Dict[str, Tuple[str, Optional[str]]] = {
    'euler': ('Euler', None), 'euler_ancestral': ('Euler a', None), 'dpmpp_2m': ('DPM++ 2M', 'Uniform'),
    'dpmpp_2m_karras': ('DPM++ 2M', 'Karras'), 'dpmpp_2m_sde_karras': ('DPM++ 2M SDE', 'Karras'),
    'ddim': ('DDIM', None), 'unipc': ('UniPC', None), 'heun': ('Heun', None), 'lcm': ('LCM', None),
}  # the other few-step samplers have no A1111 name: they are written and read as ours.
# A1111's 'Automatic' schedule per sampler (sd_samplers_kdiffusion's defaults); others: their plain one.
_AUTOMATIC = {'DPM++ 2M': 'Karras', 'DPM++ 2M SDE': 'Exponential'}
_PLAIN_SCHEDULES = (None, '', 'Uniform')
_SCHEDULE_SUFFIXES = ('Karras', 'Exponential')

# One "Label: value" item of the settings line: the label starts with a word character; the value
# is a JSON string (which may hold commas) or runs to the next comma.
_ITEM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r'^(\d+)x(\d+)$')
NEGATIVE = 'Negative prompt:'


def quote(value: Any) -> str:
    """A value as A1111 writes it: as it is, or as a JSON string when it holds ',', ':' or a newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n') else text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def sampler_words(scheduler: str) -> List[Tuple[str, str]]:
    """('Sampler', ...) and, where it matters, ('Schedule type', ...) for one of our scheduler names."""
    sampler, schedule = TO_A1111.get(scheduler, (scheduler, None))
    return [('Sampler', sampler)] + ([(SCHEDULE_LABEL, schedule)] if schedule else [])


def scheduler_from_a1111(sampler: str, schedule: Optional[str] = None) -> str:
    """Our scheduler name for A1111's sampler and schedule type (either form), or, where there is
    none, the A1111 words as one string (which the parameter check then refuses, naming it)."""
    sampler = sampler.strip()
    if sampler in SCHEDULER_NAMES:  # files written by earlier versions of this package
        return sampler
    for suffix in _SCHEDULE_SUFFIXES:  # A1111 before 1.9: 'DPM++ 2M Karras'
        if sampler.endswith(' ' + suffix) and schedule in (None, '', 'Automatic'):
            sampler, schedule = sampler[:-len(suffix) - 1], suffix
    if schedule == 'Automatic':
        schedule = _AUTOMATIC.get(sampler)
    schedule = None if schedule in _PLAIN_SCHEDULES else schedule
    for ours, (name, sched) in TO_A1111.items():
        if name.lower() == sampler.lower() and (None if sched in _PLAIN_SCHEDULES else sched) == schedule:
            return ours
    return sampler + (f' with {SCHEDULE_LABEL} {schedule}' if schedule else '')


def clip_skip_to_a1111(clip_skip: int) -> int:
    """diffusers' SDXL clip_skip (layers skipped after the penultimate) -> A1111's 'Clip skip'."""
    return clip_skip + 2


def clip_skip_from_a1111(value: int) -> Optional[int]:
    """A1111's 'Clip skip' -> diffusers' SDXL clip_skip; 1 and 2 are SDXL's own penultimate layer (None)."""
    return value - 2 if value > 2 else None


def a1111_text(parameters: Dict[str, Any]) -> str:
    """The ``parameters`` text A1111 writes: prompt, negative prompt, then 'Label: value' pairs."""
    lines = [str(parameters.get('text', ''))]
    if parameters.get('negative_prompt'):
        lines.append(f"{NEGATIVE} {parameters['negative_prompt']}")
    pairs: List[Tuple[str, Any]] = []
    for name, label in LABELS.items():
        value = parameters.get(name)
        if name == 'scheduler' and value is None and 'text' in parameters:
            value = 'euler'  # the model's own: Euler for SDXL
        if value is None:
            continue
        if name == 'scheduler':
            pairs.extend(sampler_words(value))
        elif name == 'clip_skip':
            pairs.append((label, clip_skip_to_a1111(value)))
        else:
            pairs.append((label, value))
        if name == 'seed' and parameters.get('width') and parameters.get('height'):
            pairs.append(('Size', f"{parameters['width']}x{parameters['height']}"))
    lines.append(', '.join(f'{label}: {quote(value)}' for label, value in pairs))
    return '\n'.join(lines)


def split_a1111_text(text: str) -> Tuple[str, Optional[str], Dict[str, str]]:
    """(prompt, negative prompt or None, {label: value}) as A1111's parser splits its text."""
    *lines, last = text.strip().split('\n')
    if len(_ITEM.findall(last)) < 3:  # not a settings line: part of the prompt
        lines.append(last)
        last = ''
    prompt: List[str] = []
    negative: List[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    settings = {label: _unquote(value) for label, value in _ITEM.findall(last)}
    return '\n'.join(prompt), ('\n'.join(negative) if in_negative else None), settings


def parse_a1111_text(text: str) -> Dict[str, Any]:
    """Our parameters from an A1111 ``parameters`` text (for files without the exact JSON chunk)."""
    prompt, negative, settings = split_a1111_text(text)
    params: Dict[str, Any] = {'text': prompt}
    if negative:
        params['negative_prompt'] = negative
    labels = {label: name for name, label in LABELS.items()}
    for label, value in settings.items():
        size = _SIZE.match(value)
        if label == 'Size' and size:
            params['width'], params['height'] = int(size.group(1)), int(size.group(2))
        elif label in labels:
            params[labels[label]] = _number(value)
    if 'clip_skip' in params:
        skip = params.pop('clip_skip')
        skip = clip_skip_from_a1111(skip) if isinstance(skip, int) else skip
        if skip is not None:
            params['clip_skip'] = skip
    if 'scheduler' in params or settings.get(SCHEDULE_LABEL):
        sampler = str(settings.get('Sampler', 'Euler'))
        params['scheduler'] = scheduler_from_a1111(sampler, settings.get(SCHEDULE_LABEL))
        if params['scheduler'] == 'euler':
            params.pop('scheduler')  # the model's own
    return params


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
