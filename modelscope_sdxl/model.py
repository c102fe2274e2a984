"""The ModelScope Model: SDXL base + refiner, loaded once and shared by every call."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Tuple, Union

import torch
from modelscope.models.base import TorchModel
from modelscope.models.builder import MODELS
from modelscope.utils.device import create_device

from .loading.dtypes import check_use_safetensors, choose_dtype
from .generation import generate
from .loading.lora import parse_lora
from .hub import REFINER_FILES, check_device, files_to_fetch, resolve_folder
from .loading.networks import load_components
from .names import MODEL_TYPE, TASK
from .loading.single_file import config_folders, is_single_file, local_single_file
from .parameters import GenerationRequest, ModelLimits
from .loading.repo_trust import caller_allow_pickle, origin, repo_refiner

# Keys ModelScope's Model.from_pretrained passes along with configuration.json's `model` section.
_MODELSCOPE_KEYS = frozenset({'device_map', 'trust_remote_code', 'model_prefetched', 'invoked_by'})

RefinerSpec = Union[None, str, Mapping[str, Any]]
# How the model loads: SDXLModel's arguments, which the pipeline passes through and configuration.json's
# `model` section may set.
MODEL_ARGS = ('refiner', 'refiner_revision', 'lora', 'allow_pickle', 'memory_mode', 'compile_unet', 'vae_tiling',
              'torch_dtype', 'torch_type', 'use_safetensors', 'single_file_config')


def refiner_reference(refiner: RefinerSpec, refiner_revision: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(model id or folder, revision) of the refiner from config or keyword arguments."""
    if refiner is None:
        if refiner_revision is not None:
            raise ValueError(f'refiner_revision={refiner_revision!r} was given but there is no refiner; '
                             'pass refiner= as a hub id or folder')
        return None, None
    if isinstance(refiner, str):
        if not refiner.strip():
            raise ValueError("refiner must name a hub id or a folder, got ''; leave it out (or None) for no refiner")
        return refiner, refiner_revision
    if isinstance(refiner, Mapping):
        unknown = sorted(set(refiner) - {'model_id', 'revision'})
        if unknown or not isinstance(refiner.get('model_id'), str) or not refiner['model_id'].strip():
            raise ValueError("model.refiner in configuration.json must be {'model_id': str, 'revision': str}, "
                             f'got {dict(refiner)!r}')
        revision = refiner_revision if refiner_revision is not None else refiner.get('revision')
        if revision is not None and not isinstance(revision, str):
            raise ValueError(f'model.refiner.revision must be a string, got {revision!r}')
        return refiner['model_id'], revision
    raise TypeError(f'refiner must be a hub id, a local folder or None, got {type(refiner).__name__}')


@MODELS.register_module(TASK, module_name=MODEL_TYPE)
class SDXLModel(TorchModel):
    """Base from `model_dir` (diffusers layout, or one single-file ``.safetensors`` checkpoint); refiner
    from its own repo, folder or single file, sharing the base's text_encoder_2 and VAE."""

    def __init__(self, model_dir: str, refiner: RefinerSpec = None, refiner_revision: Optional[str] = None,
                 device: str = 'gpu', lora: Any = None, allow_pickle: bool = False, memory_mode: str = 'auto',
                 compile_unet: bool = False, vae_tiling: bool = False, torch_dtype: Any = None,
                 torch_type: Any = None, use_safetensors: Optional[bool] = None, single_file_config: Any = None,
                 **kwargs: Any):
        unknown = sorted(set(kwargs) - _MODELSCOPE_KEYS)
        if unknown:
            raise TypeError(f'unknown model argument(s) {", ".join(unknown)}; known: device, {", ".join(MODEL_ARGS)}')
        allow_pickle = caller_allow_pickle(allow_pickle, model_dir)
        refiner, repo_named = origin('refiner', refiner, model_dir)
        for name, flag in (('allow_pickle', allow_pickle), ('compile_unet', compile_unet), ('vae_tiling', vae_tiling)):
            if not isinstance(flag, bool):
                raise TypeError(f'{name} must be True or False, got {flag!r}')
        check_use_safetensors(use_safetensors, allow_pickle)
        super().__init__(model_dir, device=check_device(device))
        dtype = choose_dtype(torch_dtype, torch_type, create_device(device))
        lora_specs = parse_lora(lora)
        ref, revision = refiner_reference(refiner, refiner_revision)
        if ref is not None and repo_named:
            ref = repo_refiner(ref, model_dir)
        refiner_files = files_to_fetch(REFINER_FILES, allow_pickle)
        single_file_configs = config_folders(single_file_config)
        near = os.path.dirname(model_dir) if is_single_file(model_dir) else model_dir
        if ref and is_single_file(ref):
            refiner_dir: Optional[str] = local_single_file(ref, relative_to=near)
        else:
            refiner_dir = resolve_folder(ref, revision, refiner_files, relative_to=near) if ref else None
        self.components = load_components(model_dir, refiner_dir, create_device(device), lora=lora_specs,
                                          allow_pickle=allow_pickle, memory_mode=memory_mode,
                                          compile_unet=compile_unet, vae_tiling=vae_tiling, dtype=dtype,
                                          single_file_configs=single_file_configs)
        configs = self.components.configs
        vae_scale_factor = 2 ** (len(configs['vae']['block_out_channels']) - 1)
        encoder_layers = min(configs[e]['num_hidden_layers'] for e in ('text_encoder', 'text_encoder_2'))
        self.limits = ModelLimits(
            default_size=configs['unet']['sample_size'] * vae_scale_factor,
            size_multiple=vae_scale_factor, has_refiner=self.components.refiner is not None,
            max_clip_skip=encoder_layers - 1)

    def forward(self, request: GenerationRequest, progress_bar: bool = False) -> torch.Tensor:  # type: ignore[override]
        return generate(self.components, request, progress_bar=progress_bar)
