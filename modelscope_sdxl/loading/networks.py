"""Loading SDXL base + refiner from checked local folders onto a device, in a memory mode.

Folders come from ``hub.py`` (local, or a hub snapshot); ``folder_checks.py`` vets them before any
weight is read; ``memory_modes.py`` decides which networks stay in place between calls.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from .components import SDXLComponents
from .folder_checks import ModelFolderError, check_folder, check_pair, check_tokenizer
from .lora import apply_lora
from .memory_modes import RESIDENCIES, choose_memory_mode
from .single_file import config_folder, is_single_file, load_single_file, loaded_configs


def compute_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPUs without native half/bf16 units are slower in them)."""
    return torch.float16 if device.type == 'cuda' else torch.float32


def _load(cls: Any, folder: str, role: str, single_file_configs: Optional[dict] = None, **kwargs: Any) -> Any:
    try:
        if is_single_file(folder):
            kwargs.pop('use_safetensors', None)
            return load_single_file(cls, folder, role, config_folder(role, single_file_configs or {}), **kwargs)
        return cls.from_pretrained(folder, **kwargs)
    except Exception as exc:  # diffusers/transformers errors do not say which model folder failed
        raise ModelFolderError(f'loading the SDXL {role} from {folder} failed: {type(exc).__name__}: {exc}') from exc


def load_components(base_dir: str, refiner_dir: Optional[str], device: torch.device,
                    lora: Optional[list] = None, allow_pickle: bool = False,
                    memory_mode: str = 'auto', compile_unet: bool = False,
                    vae_tiling: bool = False, dtype: Optional[torch.dtype] = None,
                    single_file_configs: Optional[dict] = None) -> SDXLComponents:
    """Check, then load base (and refiner) from local diffusers-layout folders for `device`.

    The UNets and text encoders run in `dtype` (default: fp16 on CUDA, fp32 elsewhere) while the
    VAE stays fp32, so decoding cannot overflow into NaN (black) images. `memory_mode` decides which
    networks stay resident (see memory_modes.py). `compile_unet` wraps each resident UNet in
    torch.compile (worth it on GPUs for long runs); `vae_tiling` decodes images larger than the
    VAE's tile (1024 px for SDXL) tile by tile, to fit small GPUs. `base_dir` and `refiner_dir` may
    also be single ``.safetensors`` checkpoints, loaded with `single_file_configs` ({role: config
    folder}; default: the package's SDXL configs, see single_file.py).
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    single = [d for d in (base_dir, refiner_dir) if d is not None and is_single_file(d)]
    base_configs = None if is_single_file(base_dir) else check_folder(base_dir, 'base', allow_pickle)
    refiner_configs = check_folder(refiner_dir, 'refiner', allow_pickle) \
        if refiner_dir is not None and not is_single_file(refiner_dir) else None
    if not single:
        check_pair(base_configs, refiner_configs)
    mode = choose_memory_mode(memory_mode, device, base_dir, refiner_dir)
    if single and mode == 'lean':
        raise ValueError("memory_mode='lean' reads each network from its own file of a model folder; a single-file "
                         "checkpoint loads whole: use memory_mode='resident'")
    if mode == 'lean' and (lora or allow_pickle):
        raise ValueError("memory_mode='lean' reads .safetensors UNets and text encoders per stage, so it cannot "
                         'fuse lora or read pickle weights; use memory_mode=\'resident\'')

    dtype = dtype or compute_dtype(device)
    common = dict(dtype=dtype, use_safetensors=None if allow_pickle else True, add_watermarker=False)
    per_stage = dict(unet=None, text_encoder=None, text_encoder_2=None) if mode == 'lean' else {}
    common['single_file_configs'] = single_file_configs
    base = _load(StableDiffusionXLPipeline, base_dir, 'base', **per_stage, **common)
    for name in ('tokenizer', 'tokenizer_2'):
        check_tokenizer(getattr(base, name), os.path.join(base_dir, name))
    if dtype != torch.float32:
        base.vae.to(torch.float32)
    refiner = None
    if refiner_dir is not None:
        shared = dict(text_encoder_2=base.text_encoder_2, vae=base.vae, tokenizer_2=base.tokenizer_2)
        if mode == 'lean':
            shared['unet'] = None
        refiner = _load(StableDiffusionXLImg2ImgPipeline, refiner_dir, 'refiner', **shared, **common)
    if single:
        # No folder to check before loading: the loaded networks' configs must fit together.
        base_configs = loaded_configs(base)
        check_pair(base_configs, None if refiner is None else loaded_configs(refiner))
    if lora:
        apply_lora(base, refiner, lora, allow_pickle=allow_pickle)
    if vae_tiling:
        base.vae.enable_tiling()
    if compile_unet:
        if mode != 'resident':
            raise ValueError("compile_unet needs the UNets resident: use memory_mode='resident'")
        for pipe in (base, refiner):
            if pipe is not None:
                pipe.unet = torch.compile(pipe.unet)
    for pipe in (base, refiner):
        if pipe is not None:
            if mode == 'offload':
                pipe.vae.to(device)  # small; every other network moves to the GPU for its stage only
            else:
                pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
    components = SDXLComponents(base=base, refiner=refiner, device=device, dtype=dtype, base_dir=base_dir,
                                refiner_dir=refiner_dir, memory_mode=mode, configs=base_configs)
    components.residency = RESIDENCIES[mode](components)
    return components
