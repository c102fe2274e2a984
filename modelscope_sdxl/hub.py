"""Where model files come from, without importing torch: local folders or ModelScope's hub.

Hub ids go to ModelScope's ``snapshot_download`` at a pinned revision, fetching only the files the
pipeline reads; diffusers only ever sees local folders, so it never asks another hub. The command
line uses the same rules to tell a folder from a hub id before anything heavy is imported.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

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


_DEVICE_RE = re.compile(r'^(cpu|gpu|cuda)(:\d+)?$')


def check_device(device: Any) -> str:
    """'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N' (ModelScope's names); anything else is refused up front."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device) or device.startswith('cpu:'):
        raise ValueError(f"device must be 'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N', got {device!r}")
    return device


def check_device_present(device: str) -> str:
    """An explicit CUDA device ('cuda', 'cuda:N', 'gpu:N') must exist: ModelScope would silently run on the CPU.
    ModelScope's default 'gpu' still falls back to the CPU where there is no GPU."""
    if device == 'gpu' or not device.startswith(('cuda', 'gpu')):
        return device
    import torch

    index = int(device.split(':')[1]) if ':' in device else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise ValueError(f'device {device!r} is not available here (this machine has {count} CUDA device(s)); '
                         "use device='cpu', or 'gpu' to take a GPU only where there is one")
    return device
