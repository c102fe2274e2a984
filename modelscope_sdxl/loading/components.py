"""The loaded networks of base + refiner, shared by every call, and cheap per-call views of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch


@dataclass
class SDXLComponents:
    """Every network of base + refiner, each loaded once; the refiner's text encoder and VAE are the base's.

    With memory_mode 'lean', `base` and `refiner` hold no UNet or text encoder between calls:
    `residency` puts them in place for their stage.
    """
    base: Any  # diffusers StableDiffusionXLPipeline
    refiner: Optional[Any]  # diffusers StableDiffusionXLImg2ImgPipeline sharing text_encoder_2 and vae
    device: torch.device
    dtype: torch.dtype
    base_dir: str = ''
    refiner_dir: Optional[str] = None
    memory_mode: str = 'resident'
    residency: Any = None
    configs: Dict[str, Any] = field(default_factory=dict)  # the base's component configs, by component
    # Per-model constants computed once: the refiner's encoding of the empty negative prompt.
    cache: Dict[Any, Any] = field(default_factory=dict)


def with_modules(pipe: Any, pipeline_class: Any = None, **replace: Any) -> Any:
    """A new pipeline of `pipe`'s class (or `pipeline_class`, as diffusers' ``from_pipe`` makes one)
    sharing its networks, with `replace` swapped in (cheap: no copies)."""
    options = {k: pipe.config[k] for k in ('force_zeros_for_empty_prompt', 'requires_aesthetics_score')
               if k in pipe.config}
    return (pipeline_class or type(pipe))(**{**pipe.components, **replace}, **options, add_watermarker=False)
