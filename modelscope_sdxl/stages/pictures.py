"""What each stage is given when the call starts from the caller's picture: img2img or inpainting.

The stages stay diffusers' own pipelines, built from the loaded networks the way
``from_pipe`` builds them (no copy of any weight):

- image only: the base runs ``StableDiffusionXLImg2ImgPipeline`` with ``strength=denoising_strength``;
  the refiner is already an img2img pipeline.
- image and mask: both stages run ``StableDiffusionXLInpaintPipeline`` (the refiner as diffusers'
  SDXL guide shows), with the picture's size passed explicitly, since diffusers' inpainting
  otherwise defaults to the UNet's native size.
- ``refiner_only``: no base; the refiner's img2img (or inpainting) of the picture with ``strength``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch

from ..parameters import GenerationRequest


def stage_class(request: GenerationRequest, stage: str) -> Optional[Any]:
    """diffusers pipeline class the stage runs for this call; None: the loaded pipeline's own class."""
    if request.image is None:
        return None
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    if request.mask_image is not None:
        return StableDiffusionXLInpaintPipeline
    return StableDiffusionXLImg2ImgPipeline if stage == 'base' else None


def _mask_inputs(request: GenerationRequest) -> Dict[str, Any]:
    if request.mask_image is None:
        return {}
    return {'mask_image': request.mask_image.to_pil(), 'height': request.height, 'width': request.width}


def base_inputs(request: GenerationRequest) -> Dict[str, Any]:
    """The base's size (text) or picture arguments (image, mask)."""
    if request.image is None:
        return {'height': request.height, 'width': request.width}
    return {'image': request.image.to_pil(), 'strength': request.denoising_strength, **_mask_inputs(request)}


def refiner_inputs(request: GenerationRequest, latents: Optional[torch.Tensor]) -> Dict[str, Any]:
    """What the refiner starts from: the base's latents, or with 'refiner_only' the picture itself."""
    start = request.image.to_pil() if latents is None else latents
    return {'image': start, **_mask_inputs(request)}


def pinned_vae(vae: Any) -> Any:
    """A per-call view of the shared VAE (same weights, no copy) whose ``.to()`` changes nothing.

    diffusers' img2img and inpainting encoders upcast a ``force_upcast`` VAE to fp32 and afterwards
    cast it to the UNet's dtype (``self.vae.to(dtype)``): on CUDA that would turn the fp32 VAE every
    call shares into fp16 (rounding its weights for good). The view keeps the VAE as loaded; the
    encoding itself runs in the VAE's fp32, exactly as diffusers' upcast path runs it.
    """
    view = copy.copy(vae)  # a new module object whose parameters and submodules are the shared ones
    object.__setattr__(view, 'to', lambda *args, **kwargs: view)
    return view
