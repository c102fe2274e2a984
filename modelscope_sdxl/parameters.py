"""The input contract: every generation parameter, defined once, validated before any model work.

Parameters arrive as keys of the input dict (as ModelScope's built-in diffusers
pipeline takes them) or as keyword arguments of the call (as ``modelscope
server`` passes its "parameters"). Both are merged, checked against the table
below and turned into a :class:`GenerationRequest`. The same table produces the
JSON Schema and docs/parameters.md (``inputs/schema.py``) and the command-line flags.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .inputs.text_checks import check_text
from .stages.schedulers import SCHEDULER_NAMES

REFINER_MODES = ('ensemble', 'sdedit', 'none')  # the modes of a text-only call
# 'refiner_only' runs the refiner alone on a given image (SDEdit), so it needs `image` and a refiner.
ALL_REFINER_MODES = REFINER_MODES + ('refiner_only',)
# denoising_strength defaults: AUTOMATIC1111's img2img default, and diffusers' inpainting default.
IMG2IMG_STRENGTH = 0.75
INPAINT_STRENGTH = 0.9999
MAX_SEED = 2**63 - 1
MAX_SIDE = 4096
# SDXL's trained aspect buckets (height, width), all near 1024 x 1024 pixels.
SDXL_BUCKETS: Tuple[Tuple[int, int], ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664), (640, 1600),
    (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152),
    (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896),
    (1152, 896), (1152, 832), (1216, 832), (1280, 768), (1344, 768), (1408, 704), (1472, 704), (1536, 640),
    (1600, 640), (1664, 576), (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512))


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded model accepts, so requests are checked against it before any work."""
    default_size: int  # unet.config.sample_size * vae_scale_factor
    size_multiple: int  # vae_scale_factor: latents are 1/8 of the image
    has_refiner: bool
    max_clip_skip: int = 0  # text encoder layers - 1
    max_images_per_call: int = 8


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # 'string', 'integer', 'number', 'boolean', 'size' (a pair of integers), 'image' or 'mask'
    default: Any
    stage: str  # which stage it affects: 'base', 'refiner', 'both'
    description: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: Optional[float] = None
    exclusive_maximum: Optional[float] = None
    choices: Tuple[str, ...] = ()
    nullable: bool = False
    refiner_modes: Tuple[str, ...] = ALL_REFINER_MODES  # modes in which giving it has an effect


_WITH_REFINER = ('ensemble', 'sdedit', 'refiner_only')
_WITH_BASE = REFINER_MODES
_PICTURE = ("a BGR uint8 H x W x 3 array (as cv2.imread gives), a PIL image, a file path, or base64 PNG/JPEG "
            "data (JSON callers)")

# `None` as a default means "derived at run time" (from the model or another parameter).
PARAMS: Tuple[Param, ...] = (
    Param('text', 'string', None, 'both', 'The prompt. Required. Longer than 77 tokens is encoded in chunks, '
          'never cut.'),
    Param('negative_prompt', 'string', None, 'both',
          "What the image should not show. Without it, the base uses zero embeddings "
          "(SDXL's force_zeros_for_empty_prompt).", nullable=True),
    Param('prompt_2', 'string', None, 'both',
          'Prompt for the second text encoder (OpenCLIP bigG); default: the prompt.', nullable=True),
    Param('negative_prompt_2', 'string', None, 'both',
          'Negative prompt for the second text encoder; default: negative_prompt.', nullable=True),
    Param('prompt_weighting', 'boolean', False, 'both',
          'Read (word:1.3), (word) and [word] as attention weights (AUTOMATIC1111 syntax, computed with compel).'),
    Param('num_inference_steps', 'integer', 30, 'both',
          'Denoising steps of the whole schedule, shared by base and refiner.', minimum=1, maximum=1000),
    Param('guidance_scale', 'number', 5.0, 'both',
          'Classifier-free guidance weight; values <= 1 turn guidance off.', minimum=0, maximum=100),
    Param('guidance_rescale', 'number', 0.0, 'both',
          'Rescale of the guided noise prediction (Common Diffusion Noise Schedules paper, section 3.4).',
          minimum=0, maximum=1),
    Param('scheduler', 'string', None, 'both', "Sampler for this call; default: the model's own (Euler for SDXL). "
          'lcm, tcd, euler_trailing and euler_ancestral_trailing are for few-step weights (docs/few-step.md).',
          choices=SCHEDULER_NAMES, nullable=True),
    Param('step_cache', 'integer', 1, 'both',
          'Step caching (DeepCache-style, lossy): the UNet runs in full every N-th step and reuses its deep '
          'features on the others; 1 = off. 2 made UNet steps 1.9x faster on a mid-size model '
          '(docs/performance.md).',
          minimum=1, maximum=10),
    Param('height', 'integer', None, 'base',
          "Image height in pixels, a multiple of the VAE scale factor (8). Default: the model's native size "
          '(1024 for SDXL).', nullable=True),
    Param('width', 'integer', None, 'base', 'Image width in pixels; same rules as height.', nullable=True),
    Param('aspect_ratio', 'string', None, 'base',
          "'W:H' such as '16:9': picks SDXL's nearest trained size bucket, scaled to the model's native size. "
          'Not together with height or width.', nullable=True),
    Param('seed', 'integer', None, 'both',
          'Seed of the first image: image i of the call has its own CPU generator seeded seed + i - 1 '
          "(as AUTOMATIC1111 does), used by both stages, so any image can be made again alone. Without it a "
          'random seed is drawn; the output reports it and every image\'s seed.',
          minimum=0, maximum=MAX_SEED, nullable=True),
    Param('num_images_per_prompt', 'integer', 1, 'both', 'Images made from the prompt in this call.',
          minimum=1),
    Param('refiner_mode', 'string', None, 'refiner',
          "How the refiner finishes the base's latents. Default: 'ensemble' when a refiner is loaded, "
          "else 'none'. 'refiner_only' (with an image): no base at all, the refiner's img2img of the image "
          "with strength.", choices=ALL_REFINER_MODES, nullable=True),
    Param('high_noise_frac', 'number', 0.8, 'both',
          'Share of the schedule the base denoises before the refiner takes over.',
          exclusive_minimum=0, exclusive_maximum=1, refiner_modes=('ensemble',)),
    Param('strength', 'number', 0.3, 'refiner',
          "How much noise the refiner adds back to the base's latents (with 'refiner_only': to the image).",
          exclusive_minimum=0, exclusive_maximum=1, refiner_modes=('sdedit', 'refiner_only')),
    Param('original_size', 'size', None, 'both',
          'Micro-conditioning (height, width) of the "original" image; default: (height, width).', nullable=True),
    Param('crops_coords_top_left', 'size', (0, 0), 'both',
          'Micro-conditioning crop corner (top, left); (0, 0) gives well-centred images.'),
    Param('target_size', 'size', None, 'both', 'Micro-conditioning target (height, width); default: (height, width).',
          nullable=True),
    Param('negative_original_size', 'size', None, 'both', 'original_size for the negative branch.', nullable=True),
    Param('negative_crops_coords_top_left', 'size', (0, 0), 'both', 'crops_coords_top_left for the negative branch.'),
    Param('negative_target_size', 'size', None, 'both', 'target_size for the negative branch.', nullable=True),
    Param('aesthetic_score', 'number', 6.0, 'refiner', "The refiner's aesthetic-score conditioning.",
          minimum=0, maximum=10, refiner_modes=_WITH_REFINER),
    Param('negative_aesthetic_score', 'number', 2.5, 'refiner', 'Aesthetic score of the negative branch.',
          minimum=0, maximum=10, refiner_modes=_WITH_REFINER),
    Param('clip_skip', 'integer', None, 'both',
          'Text encoder layers to skip from the end (1 = use the layer before the penultimate).',
          minimum=1, nullable=True),
    Param('image', 'image', None, 'both',
          'A picture to start from (img2img; with mask_image, inpainting): ' + _PICTURE + '. The output has '
          "its size, each side rounded down to a multiple of 8 (diffusers resizes it so); not together with "
          'height, width or aspect_ratio.', nullable=True),
    Param('mask_image', 'mask', None, 'both',
          'Inpainting mask of the same size as image: white (255) is repainted, black kept, as in diffusers '
          'and AUTOMATIC1111. H x W or H x W x 3 uint8, or a path, PIL image or base64 PNG/JPEG.', nullable=True),
    Param('denoising_strength', 'number', None, 'base',
          "How much of image the base re-noises (diffusers' strength of the base's img2img or inpainting call). "
          f'Default: {IMG2IMG_STRENGTH} (AUTOMATIC1111\'s img2img default), with mask_image {INPAINT_STRENGTH} '
          "(diffusers' inpainting default). Only with an image.",
          exclusive_minimum=0, maximum=1, nullable=True, refiner_modes=_WITH_BASE),
)
# Parameters that are pictures: not repeated in a request's parameters() (the caller holds them).
PICTURES = ('image', 'mask_image')
PARAMS_BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}
# Python-only call arguments: not JSON, so not in the schema.
CALL_ONLY = ('callback',)

Size = Tuple[int, int]


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: every field checked and every default filled in."""
    prompt: str
    negative_prompt: Optional[str]
    prompt_2: Optional[str]
    negative_prompt_2: Optional[str]
    prompt_weighting: bool
    num_inference_steps: int
    guidance_scale: float
    guidance_rescale: float
    scheduler: Optional[str]
    step_cache: int
    height: int
    width: int
    seed: int
    num_images_per_prompt: int
    refiner_mode: str
    high_noise_frac: float
    strength: float
    original_size: Optional[Size]
    crops_coords_top_left: Size
    target_size: Optional[Size]
    negative_original_size: Optional[Size]
    negative_crops_coords_top_left: Size
    negative_target_size: Optional[Size]
    aesthetic_score: float
    negative_aesthetic_score: float
    clip_skip: Optional[int]
    image: Optional[Any] = None  # images.InputImage
    mask_image: Optional[Any] = None  # images.InputImage, single channel
    denoising_strength: Optional[float] = None  # set exactly when image is
    callback: Optional[Callable[[str, int, int], Any]] = field(default=None, compare=False, repr=False)

    @property
    def seeds(self) -> List[int]:
        """Each image's own seed: seed, seed + 1, ... (A1111's rule; diffusers' list of generators)."""
        return [self.seed + i for i in range(self.num_images_per_prompt)]

    def parameters(self) -> Dict[str, Any]:
        """Every parameter that shaped the images, the seed included: enough to make them again.

        Parameters of a stage that did not run are left out, so the dict is a valid input as it is
        (with an image: together with the same image and mask_image, which are not repeated here).
        """
        values = {'text': self.prompt}
        for p in PARAMS[1:]:
            if p.name in PICTURES or (p.name == 'denoising_strength' and self.image is None):
                continue
            if p.name in ('height', 'width') and self.image is not None:  # the image's size
                continue
            if self.refiner_mode in p.refiner_modes and p.name != 'aspect_ratio':
                value = getattr(self, p.name)
                values[p.name] = list(value) if isinstance(value, tuple) else value
        return values


def _allowed(p: Param) -> str:
    if p.choices:
        return 'one of ' + ', '.join(repr(c) for c in p.choices)
    if p.type in ('image', 'mask'):
        from .inputs.images import ALLOWED

        return ALLOWED
    if p.type == 'size':
        return 'a pair of integers [a, b]' + (' >= 0' if 'crops' in p.name else ' >= 1')
    bounds = []
    if p.minimum is not None:
        bounds.append(f'>= {p.minimum:g}')
    if p.exclusive_minimum is not None:
        bounds.append(f'> {p.exclusive_minimum:g}')
    if p.maximum is not None:
        bounds.append(f'<= {p.maximum:g}')
    if p.exclusive_maximum is not None:
        bounds.append(f'< {p.exclusive_maximum:g}')
    kind = {'integer': 'an integer', 'number': 'a number', 'string': 'a string', 'boolean': 'true or false'}[p.type]
    return kind + (' ' + ' and '.join(bounds) if bounds else '')


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_value(p: Param, value: Any) -> Any:
    """Type and range check of one value; returns it normalised (int/float/str/bool/tuple)."""
    if value is None:
        if p.nullable:
            return None
        raise ValueError(f'{p.name} must be {_allowed(p)}, got None')
    if p.type in ('image', 'mask'):
        from .inputs.images import load_picture

        return load_picture(p.name, value, MAX_SIDE, mask=p.type == 'mask')
    if p.type == 'string':
        if not isinstance(value, str):
            raise TypeError(f'{p.name} must be {_allowed(p)}, got {type(value).__name__}')
        check_text(p.name, value)
        if p.choices and value not in p.choices:
            raise ValueError(f'{p.name} must be {_allowed(p)}, got {value!r}')
        return value
    if p.type == 'boolean':
        if not isinstance(value, bool):
            raise TypeError(f'{p.name} must be true or false, got {type(value).__name__} {value!r}')
        return value
    if p.type == 'size':
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) for v in value):
            raise TypeError(f'{p.name} must be {_allowed(p)}, got {value!r}')
        low = 0 if 'crops' in p.name else 1
        if min(value) < low or max(value) > 4 * MAX_SIDE:
            raise ValueError(f'{p.name} must be {_allowed(p)} and <= {4 * MAX_SIDE}, got {list(value)!r}')
        return (int(value[0]), int(value[1]))
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


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if hasattr(a, 'shape') or hasattr(b, 'shape'):  # arrays (pictures): equal content
        import numpy as np

        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


def _short(value: Any) -> str:
    """A value for a message: a picture by its kind and shape, not its pixels."""
    if hasattr(value, 'shape'):
        return f'{type(value).__name__} of shape {tuple(value.shape)}'
    text = repr(value)
    return text if len(text) <= 200 else text[:100] + f'... ({len(text)} characters)'


def merge_inputs(inputs: Any, call_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge the input dict and the call's keyword parameters; the same name twice must agree."""
    if isinstance(inputs, str):
        inputs = {'text': inputs}
    if not isinstance(inputs, Mapping):
        raise TypeError(f"input must be a dict like {{'text': 'a dog'}} or a prompt string, "
                        f'got {type(inputs).__name__}')
    merged = dict(inputs)
    for name, value in call_params.items():
        if name in merged and not _same(merged[name], value):
            raise ValueError(f'{name} is given twice with different values: {_short(merged[name])} in the input '
                             f'and {_short(value)} as a call parameter')
        merged[name] = value
    return merged


def bucket_for_aspect_ratio(aspect_ratio: str, native_size: int, multiple: int) -> Size:
    """SDXL's trained bucket nearest to 'W:H', scaled from 1024 to the model's native size."""
    parts = aspect_ratio.split(':')
    try:
        w, h = (float(x) for x in parts)
        if len(parts) != 2 or not (w > 0 and h > 0 and math.isfinite(w / h)):
            raise ValueError
    except ValueError:
        raise ValueError(f"aspect_ratio must be 'W:H' with positive numbers, such as '16:9', got {aspect_ratio!r}")
    target = math.log(w / h)
    bh, bw = min(SDXL_BUCKETS, key=lambda b: abs(math.log(b[1] / b[0]) - target))
    scale = native_size / 1024

    def snap(x: float) -> int:
        return max(multiple, int(math.floor(x * scale / multiple + 0.5)) * multiple)

    return snap(bh), snap(bw)


def check_names(raw: Mapping[str, Any], where: str = '') -> None:
    """Refuse names that are not parameters (a typo must not be silently ignored). `where` prefixes the
    message with the input's origin, such as a PNG file."""
    unknown = sorted(set(raw) - set(PARAMS_BY_NAME) - set(CALL_ONLY))
    if unknown:
        raise ValueError(f'{where}unknown parameter(s) {", ".join(map(repr, unknown))}; '
                         f'known parameters: {", ".join(known_parameters())}')


def validate(raw: Mapping[str, Any], limits: ModelLimits) -> GenerationRequest:
    """Check every parameter against the table and the loaded model; fill in defaults."""
    check_names(raw)
    if 'text' not in raw:
        raise ValueError("text is required: pass the prompt as {'text': 'a dog'}")
    callback = raw.get('callback')
    if callback is not None and not callable(callback):
        raise TypeError(f'callback must be callable as callback(stage, step, total_steps), '
                        f'got {type(callback).__name__}')
    v = {p.name: check_value(p, raw[p.name]) if p.name in raw else p.default for p in PARAMS}
    if v['text'] is None:
        raise ValueError('text must be a string, got None')

    if v['aspect_ratio'] is not None:
        if raw.get('height') is not None or raw.get('width') is not None:
            raise ValueError('aspect_ratio cannot be combined with height or width; give one or the other')
        v['height'], v['width'] = bucket_for_aspect_ratio(v['aspect_ratio'], limits.default_size,
                                                         limits.size_multiple)
    image, mask = v['image'], v['mask_image']
    if mask is not None and image is None:
        raise ValueError('mask_image needs an image: give image (the picture to repaint) too')
    if image is not None:
        given = [name for name in ('height', 'width', 'aspect_ratio') if raw.get(name) is not None]
        if given:
            raise ValueError(f'{" and ".join(given)} cannot be given with an image: the output has the '
                             "image's size (each side rounded down to a multiple of 8)")
        m = limits.size_multiple
        if image.height < m or image.width < m:
            raise ValueError(f'image must be at least {m} pixels on each side, got {image.height}x{image.width}')
        if mask is not None and (mask.height, mask.width) != (image.height, image.width):
            raise ValueError(f'mask_image is {mask.height}x{mask.width} pixels (height x width) but image is '
                             f'{image.height}x{image.width}; they must be the same size')
        v['height'], v['width'] = image.height // m * m, image.width // m * m
    elif v['denoising_strength'] is not None:
        raise ValueError('denoising_strength applies only with an image (how much of it the base re-noises)')
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
    if v['clip_skip'] is not None and v['clip_skip'] > limits.max_clip_skip:
        raise ValueError(f"clip_skip must be between 1 and {limits.max_clip_skip} for this model's text "
                         f"encoders, got {v['clip_skip']}")

    mode = v['refiner_mode'] or ('ensemble' if limits.has_refiner else 'none')
    if mode == 'refiner_only' and image is None:
        raise ValueError("refiner_mode='refiner_only' refines a given picture: give image too")
    if mode != 'none' and not limits.has_refiner:
        raise ValueError(f"refiner_mode={mode!r} needs a refiner, and this pipeline has none; "
                         "use refiner_mode='none' or load one with pipeline(..., refiner=...)")
    for p in PARAMS:
        if p.name in raw and mode not in p.refiner_modes:
            modes = ' or '.join(repr(m) for m in p.refiner_modes)
            raise ValueError(f'{p.name} applies only to refiner_mode={modes}, not {mode!r}')
    steps = v['num_inference_steps']
    if mode == 'ensemble':
        base_steps = int(v['high_noise_frac'] * steps)
        if base_steps < 1 or base_steps >= steps:
            raise ValueError(f"num_inference_steps={steps} with high_noise_frac={v['high_noise_frac']:g} leaves "
                             'a stage with no step; use more steps')
    if image is not None and mode != 'refiner_only':
        if v['denoising_strength'] is None:
            v['denoising_strength'] = INPAINT_STRENGTH if mask is not None else IMG2IMG_STRENGTH
        base_steps = int(v['denoising_strength'] * steps)
        if mode == 'ensemble':
            base_steps -= steps - int(v['high_noise_frac'] * steps)
        if base_steps < 1:
            raise ValueError(f"num_inference_steps={steps} with denoising_strength={v['denoising_strength']:g}"
                             + (f" and high_noise_frac={v['high_noise_frac']:g}" if mode == 'ensemble' else '')
                             + ' gives the base no step; use more steps or a higher denoising_strength')
    if mode in ('sdedit', 'refiner_only') and int(v['strength'] * steps) < 1:
        raise ValueError(f"num_inference_steps={steps} with strength={v['strength']:g} gives the refiner no "
                         'step; use more steps or a higher strength')

    seed_given = v['seed'] is not None
    if seed_given and v['seed'] + images - 1 > MAX_SEED:
        raise ValueError(f'seed must be <= {MAX_SEED - images + 1} for {images} images (image i uses seed + i - 1, '
                         f"at most {MAX_SEED}), got {v['seed']}")
    values = {f.name: v[f.name] for f in dataclasses.fields(GenerationRequest)
              if f.name in v and f.name != 'text'}
    values.update(prompt=v['text'], refiner_mode=mode, num_images_per_prompt=images,
                  seed=v['seed'] if seed_given else random.SystemRandom().randrange(2**32), callback=callback)
    return GenerationRequest(**values)


def known_parameters() -> List[str]:
    return [p.name for p in PARAMS] + list(CALL_ONLY)
