"""The two stages: the base makes latents, the refiner finishes them, the VAE decodes once.

Each call runs on its own lightweight diffusers pipeline objects that share the
loaded networks but own a fresh scheduler, because diffusers schedulers carry
per-call state. Prompts are encoded under a lock (the Rust tokenizers raise
"Already borrowed" when shared across threads) and the embeddings are passed to
diffusers, which then does exactly what it does for a plain ``prompt=``.
"""
from __future__ import annotations

import threading
from typing import Any, Dict

import torch

from .loading import SDXLComponents
from .parameters import GenerationRequest

_ENCODE_LOCK = threading.Lock()


class NonFiniteOutputError(RuntimeError):
    """Raised instead of returning a black image when latents or pixels hold NaN or inf."""


def _for_this_call(pipe: Any) -> Any:
    """A pipeline sharing `pipe`'s networks with a scheduler of its own."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    options = {k: pipe.config[k] for k in ('force_zeros_for_empty_prompt', 'requires_aesthetics_score')
               if k in pipe.config}
    fresh = type(pipe)(**{**pipe.components, 'scheduler': scheduler}, **options, add_watermarker=False)
    fresh.set_progress_bar_config(disable=True)
    return fresh


def _uses_guidance(pipe: Any, guidance_scale: float) -> bool:
    # The same test diffusers' SDXL pipelines use for `do_classifier_free_guidance`.
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None


def _encode(pipe: Any, request: GenerationRequest, device: torch.device) -> Dict[str, torch.Tensor]:
    """Prompt embeddings exactly as `pipe.__call__(prompt=...)` would compute them."""
    with _ENCODE_LOCK:
        embeds = pipe.encode_prompt(
            prompt=request.prompt, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=_uses_guidance(pipe, request.guidance_scale),
            negative_prompt=request.negative_prompt)
    names = ('prompt_embeds', 'negative_prompt_embeds', 'pooled_prompt_embeds',
             'negative_pooled_prompt_embeds')
    return {k: v for k, v in zip(names, embeds) if v is not None}


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteOutputError(
            f'{what} contain NaN or inf; no image is returned. On CUDA this usually means a '
            'half-precision overflow: try device="cpu" or another seed.')


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] (N, 3, H, W), float32, decoded in fp32 as diffusers' SDXL does."""
    _check_finite(latents, 'latents')
    vae_dtype = next(vae.post_quant_conv.parameters()).dtype
    latents = latents.to(vae_dtype)
    config = vae.config
    if getattr(config, 'latents_mean', None) is not None and getattr(config, 'latents_std', None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    image = vae.decode(latents, return_dict=False)[0].float()
    _check_finite(image, 'decoded pixels')
    return (image / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def generate(components: SDXLComponents, request: GenerationRequest) -> torch.Tensor:
    """Run base (and refiner) for one request; return images in [0, 1], (N, 3, H, W) on the CPU."""
    device = components.device
    generator = torch.Generator('cpu').manual_seed(request.seed)
    common: Dict[str, Any] = dict(
        num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.num_images_per_prompt, generator=generator, output_type='latent')

    base = _for_this_call(components.base)
    base_args: Dict[str, Any] = dict(common, height=request.height, width=request.width)
    if request.refiner_mode == 'ensemble':
        base_args['denoising_end'] = request.high_noise_frac
    latents = base(**_encode(base, request, device), **base_args).images

    if request.refiner_mode != 'none':
        refiner = _for_this_call(components.refiner)
        refiner_args: Dict[str, Any] = dict(common, image=latents)
        if request.refiner_mode == 'ensemble':
            refiner_args['denoising_start'] = request.high_noise_frac
        else:
            refiner_args['strength'] = request.strength
        latents = refiner(**_encode(refiner, request, device), **refiner_args).images

    return decode_latents(components.base.vae, latents).cpu()
