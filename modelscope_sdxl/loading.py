"""Finding model folders (local or through ModelScope's hub client) and loading SDXL components.

Hub ids go to ModelScope's ``snapshot_download`` at a pinned revision; diffusers
only ever sees local folders, so it never asks another hub.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from .model_folders import ModelFolderError, check_folder, check_pair

# What the pipeline reads from each repo: configs, tokenizers and the
# .safetensors weights of the components it uses. Single-file checkpoints at the
# repo root, pickle weights and fp16/onnx/flax variants are never fetched.
BASE_FILES = [
    'configuration.json', 'model_index.json', 'scheduler/scheduler_config.json',
    'tokenizer/*', 'tokenizer_2/*',
    'text_encoder/config.json', 'text_encoder/model.safetensors',
    'text_encoder_2/config.json', 'text_encoder_2/model.safetensors',
    'unet/config.json', 'unet/diffusion_pytorch_model.safetensors',
    'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
]
PICKLE_FILES = ['unet/diffusion_pytorch_model.bin', 'vae/diffusion_pytorch_model.bin',
                'text_encoder/pytorch_model.bin', 'text_encoder_2/pytorch_model.bin']
# The refiner shares the base's text_encoder_2 and VAE, so only its UNet
# weights and configs are fetched.
REFINER_FILES = [
    'configuration.json', 'model_index.json', 'scheduler/scheduler_config.json', 'tokenizer_2/*',
    'text_encoder_2/config.json', 'vae/config.json',
    'unet/config.json', 'unet/diffusion_pytorch_model.safetensors',
]


def files_to_fetch(files: List[str], allow_pickle: bool) -> List[str]:
    """Download patterns: the .safetensors layout, plus pickle weights only when the caller opted in."""
    if not allow_pickle:
        return files
    prefixes = {f.split('/')[0] for f in files if f.endswith('.safetensors')}
    return files + [f for f in PICKLE_FILES if f.split('/')[0] in prefixes]


def is_local_reference(ref: str) -> bool:
    """A model reference names a local folder when it is a path that exists or looks like one."""
    return os.path.isabs(ref) or ref.startswith(('.', '~')) or os.path.isdir(ref)


def resolve_folder(ref: str, revision: Optional[str], files: List[str],
                   relative_to: Optional[str] = None) -> str:
    """Return a local folder for `ref`: the folder itself, or a hub snapshot at `revision`."""
    if is_local_reference(ref):
        path = os.path.expanduser(ref)
        if not os.path.isabs(path) and relative_to is not None and not os.path.isdir(path):
            path = os.path.normpath(os.path.join(relative_to, path))
        if not os.path.isdir(path):
            raise FileNotFoundError(f'model folder {ref!r} does not exist (resolved to {path!r})')
        return path
    from modelscope.hub.snapshot_download import snapshot_download

    kwargs: Dict[str, Any] = {'allow_patterns': files}
    if revision is not None:
        kwargs['revision'] = revision
    try:
        return snapshot_download(ref, **kwargs)
    except ConnectionError as error:
        # The hub cannot be reached: use the snapshot an earlier download of this revision cached.
        try:
            return snapshot_download(ref, local_files_only=True, **kwargs)
        except Exception as cache_error:
            raise ConnectionError(
                f'cannot reach the ModelScope hub to download {ref!r} at revision {revision or "master"!r}, '
                f'and no earlier download of it is cached: {cache_error}') from error


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


_DEVICE_RE = re.compile(r'^(cpu|gpu|cuda)(:\d+)?$')


def check_device(device: Any) -> str:
    """'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N' (ModelScope's names); anything else is refused up front."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device) or device.startswith('cpu:'):
        raise ValueError(f"device must be 'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N', got {device!r}")
    return device


def compute_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (CPUs without native half/bf16 units are slower in them)."""
    return torch.float16 if device.type == 'cuda' else torch.float32


def with_modules(pipe: Any, **replace: Any) -> Any:
    """A new pipeline of `pipe`'s class sharing its networks, with `replace` swapped in (cheap: no copies)."""
    options = {k: pipe.config[k] for k in ('force_zeros_for_empty_prompt', 'requires_aesthetics_score')
               if k in pipe.config}
    return type(pipe)(**{**pipe.components, **replace}, **options, add_watermarker=False)


def _load(cls: Any, folder: str, role: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(folder, **kwargs)
    except Exception as exc:  # diffusers/transformers errors do not say which model folder failed
        raise ModelFolderError(f'loading the SDXL {role} from {folder} failed: {type(exc).__name__}: {exc}') from exc


def load_components(base_dir: str, refiner_dir: Optional[str], device: torch.device,
                    lora: Optional[list] = None, allow_pickle: bool = False,
                    memory_mode: str = 'auto', compile_unet: bool = False,
                    vae_tiling: bool = False) -> SDXLComponents:
    """Check, then load base (and refiner) from local diffusers-layout folders for `device`.

    On CUDA the UNets and text encoders run in fp16 while the VAE stays fp32, so
    decoding cannot overflow into NaN (black) images. `memory_mode` decides which
    networks stay resident (see residency.py). `compile_unet` wraps each resident UNet in
    torch.compile (worth it on GPUs for long runs); `vae_tiling` decodes images larger than the
    VAE's tile (1024 px for SDXL) tile by tile, to fit small GPUs.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from .residency import RESIDENCIES, choose_memory_mode

    base_configs = check_folder(base_dir, 'base', allow_pickle)
    refiner_configs = check_folder(refiner_dir, 'refiner', allow_pickle) if refiner_dir is not None else None
    check_pair(base_configs, refiner_configs)
    mode = choose_memory_mode(memory_mode, device, base_dir, refiner_dir)
    if mode == 'lean' and (lora or allow_pickle):
        raise ValueError("memory_mode='lean' reads .safetensors UNets and text encoders per stage, so it cannot "
                         'fuse lora or read pickle weights; use memory_mode=\'resident\'')

    dtype = compute_dtype(device)
    common = dict(dtype=dtype, use_safetensors=None if allow_pickle else True, add_watermarker=False)
    per_stage = dict(unet=None, text_encoder=None, text_encoder_2=None) if mode == 'lean' else {}
    base = _load(StableDiffusionXLPipeline, base_dir, 'base', **per_stage, **common)
    if dtype != torch.float32:
        base.vae.to(torch.float32)
    refiner = None
    if refiner_dir is not None:
        shared = dict(text_encoder_2=base.text_encoder_2, vae=base.vae, tokenizer_2=base.tokenizer_2)
        if mode == 'lean':
            shared['unet'] = None
        refiner = _load(StableDiffusionXLImg2ImgPipeline, refiner_dir, 'refiner', **shared, **common)
    if lora:
        from .lora import apply_lora
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
