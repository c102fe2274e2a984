"""The two stages: the base makes latents, the refiner finishes them, the VAE decodes once.

Each call runs on its own lightweight diffusers pipeline objects that share the
loaded networks but own a fresh scheduler, because diffusers schedulers carry
per-call state. Prompt embeddings come from :mod:`prompts` and are passed to
diffusers, which then does exactly what it does for a plain ``prompt=``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

import torch

from .loading.components import SDXLComponents, with_modules
from .parameters import GenerationRequest
from .stages.pictures import base_inputs, pinned_vae, refiner_inputs, stage_class
from .stages.prompts import encode, encode_for_refiner, uses_guidance
from .stages.schedulers import make_scheduler
from .stages.step_cache import with_step_cache


class NonFiniteOutputError(RuntimeError):
    """Raised instead of returning a black image when latents or pixels hold NaN or inf."""


class GenerationCancelled(RuntimeError):
    """The call's callback returned False: the run stopped and no image is returned."""


def _for_this_call(pipe: Any, request: GenerationRequest, stage: str, progress_bar: bool) -> Any:
    """A pipeline sharing `pipe`'s networks with a scheduler (and, with step_cache, a UNet cache) of its own;
    for a call from a picture, of the class that stage needs, with a VAE view diffusers cannot cast
    (picture_stages)."""
    replace = {'scheduler': make_scheduler(pipe.scheduler, request.scheduler)}
    if request.step_cache > 1:
        replace['unet'] = with_step_cache(pipe.unet, request.step_cache)
    if request.image is not None:
        replace['vae'] = pinned_vae(pipe.vae)
    fresh = with_modules(pipe, stage_class(request, stage), **replace)
    fresh.set_progress_bar_config(disable=not progress_bar, desc=stage, leave=False)
    return fresh


def _step_callback(request: GenerationRequest, stage: str) -> Optional[Any]:
    """diffusers' callback_on_step_end calling the user's callback(stage, step, total_steps)."""
    if request.callback is None:
        return None

    def on_step_end(pipe: Any, i: int, t: Any, tensors: Dict[str, Any]) -> Dict[str, Any]:
        if request.callback(stage, i + 1, pipe.num_timesteps) is False:
            pipe._interrupt = True  # diffusers' own way to skip the remaining steps
        return tensors

    return on_step_end


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        hint = ('On CUDA in half precision this usually means an overflow: try device="cpu" or another seed.'
                if tensor.is_cuda and tensor.dtype in (torch.float16, torch.bfloat16) else
                f'In {str(tensor.dtype).replace("torch.", "")} on the {tensor.device.type.upper()} this comes from '
                'the inputs or the weights: extreme prompt weights, or weights that are not finite.')
        raise NonFiniteOutputError(f'{what} contain NaN or inf; no image is returned. {hint}')


def _decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    latents = latents.to(next(vae.post_quant_conv.parameters()).dtype)
    config = vae.config
    if getattr(config, 'latents_mean', None) is not None and getattr(config, 'latents_std', None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    return vae.decode(latents, return_dict=False)[0].float()


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] (N, 3, H, W), float32, as diffusers' SDXL decodes them.

    A VAE held in half precision that overflows is retried once in fp32 (on a copy, so
    concurrent calls never see the shared VAE change); NaN or inf that remains raises
    NonFiniteOutputError instead of returning a black image.
    """
    _check_finite(latents, 'latents')
    image = _decode(vae, latents)
    if not torch.isfinite(image).all() and next(vae.parameters()).dtype != torch.float32:
        image = _decode(copy.deepcopy(vae).float(), latents.float())
    _check_finite(image, 'decoded pixels')
    return (image / 2 + 0.5).clamp(0, 1)


def _run_stage(pipe: Any, stage: str, request: GenerationRequest, embeds: Dict[str, torch.Tensor],
               args: Dict[str, Any]) -> torch.Tensor:
    callback = _step_callback(request, stage)
    try:
        latents = pipe(**embeds, **args, callback_on_step_end=callback).images
    except torch.OutOfMemoryError as exc:
        exc.add_note(f'during the {stage} stage of a {request.num_images_per_prompt} x {request.height}x'
                     f'{request.width} request: ask for fewer images or a smaller size')
        raise
    if pipe.interrupt:
        raise GenerationCancelled(f'cancelled by the callback during the {stage} stage')
    return latents


# The two helpers below hold the stage's networks only in their own frames, so a lean residency
# really frees them when the stage ends.
def _encode_both(components: SDXLComponents, request: GenerationRequest, guidance: bool,
                 use_refiner: bool) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
    with components.residency.encoders() as (base_encoder, refiner_encoder):
        base_embeds = encode(base_encoder, request, components.device, guidance)
        refiner_embeds = encode_for_refiner(refiner_encoder, request, components.device, guidance, base_embeds,
                                            components.cache) if use_refiner else None
        return base_embeds, refiner_embeds


def _in_stage(components: SDXLComponents, stage: str, request: GenerationRequest, embeds: Dict[str, torch.Tensor],
              args: Dict[str, Any], progress_bar: bool) -> torch.Tensor:
    with components.residency.stage(stage) as pipe:
        return _run_stage(_for_this_call(pipe, request, stage, progress_bar), stage, request, embeds, args)


@torch.no_grad()
def generate(components: SDXLComponents, request: GenerationRequest, progress_bar: bool = False) -> torch.Tensor:
    """Run base (and refiner) for one request; return images in [0, 1], (N, 3, H, W) on the CPU.

    Prompts are encoded first for both stages, then each stage runs with only its own
    networks needed, which lets a lean or offload residency keep one stage in place at a time.
    """
    residency = components.residency
    use_refiner = request.refiner_mode != 'none'
    guidance = uses_guidance(request.guidance_scale, components.configs['unet'].get('time_cond_proj_dim'))
    # One CPU generator per image (diffusers' list of generators), used by both stages: image i is the
    # same whether it is made alone with its own seed or as part of a batch.
    generators = [torch.Generator('cpu').manual_seed(seed) for seed in request.seeds]
    common: Dict[str, Any] = dict(
        num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
        guidance_rescale=request.guidance_rescale, num_images_per_prompt=request.num_images_per_prompt,
        generator=generators, output_type='latent', original_size=request.original_size,
        crops_coords_top_left=request.crops_coords_top_left, target_size=request.target_size,
        negative_original_size=request.negative_original_size,
        negative_crops_coords_top_left=request.negative_crops_coords_top_left,
        negative_target_size=request.negative_target_size)

    with residency.lock():
        base_embeds, refiner_embeds = _encode_both(components, request, guidance, use_refiner)
        latents = None
        if request.refiner_mode != 'refiner_only':
            base_args: Dict[str, Any] = dict(common, **base_inputs(request))
            if request.refiner_mode == 'ensemble':
                base_args['denoising_end'] = request.high_noise_frac
            latents = _in_stage(components, 'base', request, base_embeds, base_args, progress_bar)
        if use_refiner:
            refiner_args: Dict[str, Any] = dict(common, **refiner_inputs(request, latents),
                                                aesthetic_score=request.aesthetic_score,
                                                negative_aesthetic_score=request.negative_aesthetic_score)
            if request.refiner_mode == 'ensemble':
                refiner_args['denoising_start'] = request.high_noise_frac
            else:
                refiner_args['strength'] = request.strength
            latents = _in_stage(components, 'refiner', request, refiner_embeds, refiner_args, progress_bar)

    return decode_latents(components.base.vae, latents).cpu()
