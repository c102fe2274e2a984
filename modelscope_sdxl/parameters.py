"""The input contract: every generation parameter, defined once, validated before any model work.

Parameters arrive as keys of the input dict (as ModelScope's built-in diffusers
pipeline takes them) or as keyword arguments of the call (as ``modelscope
server`` passes its "parameters"). Both are merged, checked against the table
below and turned into a :class:`GenerationRequest`. The same table produces the
JSON Schema (:func:`json_schema`) and docs/parameters.md.
"""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

REFINER_MODES = ('ensemble', 'sdedit', 'none')
MAX_SEED = 2**63 - 1
MAX_SIDE = 4096


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model accepts, so requests are checked against it before any work."""
    default_size: int  # unet.config.sample_size * vae_scale_factor
    size_multiple: int  # vae_scale_factor: latents are 1/8 of the image
    has_refiner: bool
    max_images_per_call: int = 8


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # JSON Schema type: 'string', 'integer', 'number'
    default: Any
    stage: str  # which stage it affects: 'base', 'refiner', 'both', 'output'
    description: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: Optional[float] = None
    exclusive_maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    nullable: bool = False


# `None` as a default means "derived at run time" (from the model or another parameter).
PARAMS: Tuple[Param, ...] = (
    Param('text', 'string', None, 'both', 'The prompt. Required.'),
    Param('negative_prompt', 'string', None, 'both',
          'What the image should not show. Without it, the base uses zero embeddings '
          '(SDXL\'s force_zeros_for_empty_prompt).', nullable=True),
    Param('num_inference_steps', 'integer', 30, 'both',
          'Denoising steps of the whole schedule, shared by base and refiner.', minimum=1, maximum=1000),
    Param('guidance_scale', 'number', 5.0, 'both',
          'Classifier-free guidance weight; values <= 1 turn guidance off.', minimum=0, maximum=100),
    Param('height', 'integer', None, 'base',
          'Image height in pixels; a multiple of the VAE scale factor (8). Default: the model\'s native size '
          '(1024 for SDXL).', nullable=True),
    Param('width', 'integer', None, 'base', 'Image width in pixels; same rules as height.', nullable=True),
    Param('seed', 'integer', None, 'both',
          'Seed of the CPU generator used by both stages. Without it a random seed is drawn and reported '
          'in the output.', minimum=0, maximum=MAX_SEED, nullable=True),
    Param('num_images_per_prompt', 'integer', 1, 'both', 'Images made from the prompt in this call.',
          minimum=1),
    Param('refiner_mode', 'string', None, 'refiner',
          "How the refiner finishes the base's latents. Default: 'ensemble' when a refiner is loaded, "
          "else 'none'.", choices=REFINER_MODES, nullable=True),
    Param('high_noise_frac', 'number', 0.8, 'both',
          "refiner_mode='ensemble' only: share of the schedule the base denoises before the refiner "
          'takes over.', exclusive_minimum=0, exclusive_maximum=1),
    Param('strength', 'number', 0.3, 'refiner',
          "refiner_mode='sdedit' only: how much noise the refiner adds back to the base's latents.",
          exclusive_minimum=0, exclusive_maximum=1),
)
PARAMS_BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: every field checked and every default filled in."""
    prompt: str
    negative_prompt: Optional[str]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    seed: int
    num_images_per_prompt: int
    refiner_mode: str
    high_noise_frac: float
    strength: float
    seed_was_given: bool = field(default=True, compare=False)

    def parameters(self) -> Dict[str, Any]:
        """Every parameter that shaped the images, the seed included: enough to make them again."""
        return {
            'text': self.prompt, 'negative_prompt': self.negative_prompt,
            'num_inference_steps': self.num_inference_steps, 'guidance_scale': self.guidance_scale,
            'height': self.height, 'width': self.width, 'seed': self.seed,
            'num_images_per_prompt': self.num_images_per_prompt, 'refiner_mode': self.refiner_mode,
            'high_noise_frac': self.high_noise_frac, 'strength': self.strength,
        }


def _allowed(p: Param) -> str:
    if p.choices:
        return 'one of ' + ', '.join(repr(c) for c in p.choices)
    bounds = []
    if p.minimum is not None:
        bounds.append(f'>= {p.minimum:g}')
    if p.exclusive_minimum is not None:
        bounds.append(f'> {p.exclusive_minimum:g}')
    if p.maximum is not None:
        bounds.append(f'<= {p.maximum:g}')
    if p.exclusive_maximum is not None:
        bounds.append(f'< {p.exclusive_maximum:g}')
    kind = {'integer': 'an integer', 'number': 'a number', 'string': 'a string'}[p.type]
    return kind + (' ' + ' and '.join(bounds) if bounds else '')


def _check_value(p: Param, value: Any) -> Any:
    """Type and range check of one value; returns it normalised (int/float/str)."""
    if value is None:
        if p.nullable:
            return None
        raise ValueError(f'{p.name} must be {_allowed(p)}, got None')
    if p.type == 'string':
        if not isinstance(value, str):
            raise TypeError(f'{p.name} must be a string, got {type(value).__name__}')
        if p.choices and value not in p.choices:
            raise ValueError(f'{p.name} must be {_allowed(p)}, got {value!r}')
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{p.name} must be {_allowed(p)}, got {type(value).__name__} {value!r}')
    if p.type == 'integer':
        if not isinstance(value, numbers.Integral):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise TypeError(f'{p.name} must be {_allowed(p)}, got {value!r}')
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f'{p.name} must be {_allowed(p)}, got {value!r}')
    if ((p.minimum is not None and value < p.minimum) or (p.maximum is not None and value > p.maximum)
            or (p.exclusive_minimum is not None and value <= p.exclusive_minimum)
            or (p.exclusive_maximum is not None and value >= p.exclusive_maximum)):
        raise ValueError(f'{p.name} must be {_allowed(p)}, got {value!r}')
    return value


def merge_inputs(inputs: Any, call_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge the input dict and the call's keyword parameters; the same name twice must agree."""
    if isinstance(inputs, str):
        inputs = {'text': inputs}
    if not isinstance(inputs, Mapping):
        raise TypeError(f"input must be a dict like {{'text': 'a dog'}} or a prompt string, "
                        f'got {type(inputs).__name__}')
    merged = dict(inputs)
    for name, value in call_params.items():
        if name in merged and merged[name] != value:
            raise ValueError(f'{name} is given twice with different values: {merged[name]!r} in the input '
                             f'and {value!r} as a call parameter')
        merged[name] = value
    return merged


def validate(raw: Mapping[str, Any], limits: ModelLimits) -> GenerationRequest:
    """Check every parameter against the table and the loaded model; fill in defaults."""
    unknown = sorted(set(raw) - set(PARAMS_BY_NAME))
    if unknown:
        raise ValueError(f'unknown parameter(s) {", ".join(map(repr, unknown))}; '
                         f'known parameters: {", ".join(p.name for p in PARAMS)}')
    if 'text' not in raw:
        raise ValueError("text is required: pass the prompt as {'text': 'a dog'}")
    v = {p.name: _check_value(p, raw[p.name]) if p.name in raw else p.default for p in PARAMS}
    if v['text'] is None:
        raise ValueError('text must be a string, got None')

    for side in ('height', 'width'):
        if v[side] is None:
            v[side] = limits.default_size
        elif v[side] % limits.size_multiple or not limits.size_multiple <= v[side] <= MAX_SIDE:
            raise ValueError(f'{side} must be a multiple of {limits.size_multiple} between '
                             f'{limits.size_multiple} and {MAX_SIDE}, got {v[side]}')

    images = v['num_images_per_prompt']
    if images > limits.max_images_per_call:
        raise ValueError(f'num_images_per_prompt must be <= {limits.max_images_per_call} '
                         f'(max_images_per_call of this pipeline), got {images}')

    mode = v['refiner_mode'] or ('ensemble' if limits.has_refiner else 'none')
    if mode != 'none' and not limits.has_refiner:
        raise ValueError(f"refiner_mode={mode!r} needs a refiner, and this pipeline has none; "
                         "use refiner_mode='none' or load one with pipeline(..., refiner=...)")
    if 'high_noise_frac' in raw and mode != 'ensemble':
        raise ValueError(f"high_noise_frac applies only to refiner_mode='ensemble', not {mode!r}")
    if 'strength' in raw and mode != 'sdedit':
        raise ValueError(f"strength applies only to refiner_mode='sdedit', not {mode!r}")
    if mode == 'ensemble':
        base_steps = int(v['high_noise_frac'] * v['num_inference_steps'])
        if base_steps < 1 or base_steps >= v['num_inference_steps']:
            raise ValueError(f"num_inference_steps={v['num_inference_steps']} with high_noise_frac="
                             f"{v['high_noise_frac']:g} leaves a stage with no step; use more steps")
    if mode == 'sdedit' and int(v['strength'] * v['num_inference_steps']) < 1:
        raise ValueError(f"num_inference_steps={v['num_inference_steps']} with strength={v['strength']:g} "
                         'gives the refiner no step; use more steps or a higher strength')

    seed_given = v['seed'] is not None
    seed = v['seed'] if seed_given else random.SystemRandom().randrange(2**32)
    return GenerationRequest(
        prompt=v['text'], negative_prompt=v['negative_prompt'],
        num_inference_steps=v['num_inference_steps'], guidance_scale=v['guidance_scale'],
        height=v['height'], width=v['width'], seed=seed, num_images_per_prompt=images,
        refiner_mode=mode, high_noise_frac=v['high_noise_frac'], strength=v['strength'],
        seed_was_given=seed_given)


def json_schema() -> Dict[str, Any]:
    """JSON Schema of the input, generated from the same table the validation uses."""
    props: Dict[str, Any] = {}
    for p in PARAMS:
        s: Dict[str, Any] = {'type': [p.type, 'null'] if p.nullable else p.type,
                             'description': p.description, 'x-stage': p.stage}
        if p.default is not None:
            s['default'] = p.default
        if p.choices:
            s['enum'] = list(p.choices) + ([None] if p.nullable else [])
        for key, val in (('minimum', p.minimum), ('maximum', p.maximum),
                         ('exclusiveMinimum', p.exclusive_minimum), ('exclusiveMaximum', p.exclusive_maximum)):
            if val is not None:
                s[key] = val
        props[p.name] = s
    return {'$schema': 'https://json-schema.org/draft/2020-12/schema', 'title': 'SDXL base + refiner input',
            'type': 'object', 'properties': props, 'required': ['text'], 'additionalProperties': False}


def known_parameters() -> List[str]:
    return [p.name for p in PARAMS]
