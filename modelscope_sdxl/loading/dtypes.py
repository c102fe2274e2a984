"""The arguments ModelScope's own Stable Diffusion pipelines take for precision and weight format.

``pipeline(..., torch_dtype=torch.float16)`` (diffusers' name) and ``torch_type=`` (ModelScope's
name) choose the precision of the UNets and text encoders; the VAE always stays fp32, because
SDXL's VAE overflows to NaN (black images) in fp16. ``use_safetensors=True`` is accepted because
it is what this package does anyway; ``use_safetensors=False`` is refused with the way to opt in to
pickle weights (``allow_pickle=True``).

Importing this module does not import torch: the command line needs the names to parse ``--dtype``.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

#: Names accepted for torch_dtype / torch_type / --dtype.
DTYPE_NAMES = ('float16', 'bfloat16', 'float32')


class SlowDtypeWarning(UserWarning):
    """A half-precision dtype was chosen on a CPU without native units for it: it runs, but slower than fp32."""


def parse_dtype(value: Any, name: str = 'torch_dtype') -> Optional[Any]:
    """None, a torch dtype or one of DTYPE_NAMES -> None or the torch dtype; anything else is refused."""
    import torch

    allowed = {n: getattr(torch, n) for n in DTYPE_NAMES}
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value not in allowed.values():
            raise ValueError(f'{name} must be torch.float16, torch.bfloat16 or torch.float32, got {value}')
        return value
    if isinstance(value, str):
        key = value[len('torch.'):] if value.startswith('torch.') else value
        if key not in allowed:
            raise ValueError(f'{name} must be {", ".join(map(repr, DTYPE_NAMES))} or a torch dtype, got {value!r}')
        return allowed[key]
    raise TypeError(f'{name} must be a torch dtype or one of {", ".join(map(repr, DTYPE_NAMES))}, '
                    f'got {type(value).__name__} {value!r}')


def cpu_has_native_units(dtype: Any) -> bool:
    """Whether this CPU runs `dtype` matrix work natively (oneDNN's own test); fp32 always does."""
    import torch

    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def choose_dtype(torch_dtype: Any, torch_type: Any, device: Any) -> Any:
    """The UNets' and text encoders' dtype: the one asked for, else fp16 on CUDA and fp32 elsewhere.

    `torch_dtype` and `torch_type` are two names for one setting (diffusers' and ModelScope's); giving
    both with different values is refused. Half precision on a CPU without native units for it is
    warned about (SlowDtypeWarning): it works, but every step is slower than fp32.
    """
    import torch

    first, second = parse_dtype(torch_dtype, 'torch_dtype'), parse_dtype(torch_type, 'torch_type')
    if first is not None and second is not None and first != second:
        raise ValueError(f'torch_dtype={torch_dtype!r} and torch_type={torch_type!r} name one setting with two '
                         'different values; pass one of them')
    chosen = first if first is not None else second
    if chosen is None:
        return torch.float16 if device.type == 'cuda' else torch.float32
    if device.type == 'cpu' and not cpu_has_native_units(chosen):
        warnings.warn(f'{str(chosen).replace("torch.", "")} on this CPU has no native units: it runs, but slower '
                      'than float32 (the default on a CPU)', SlowDtypeWarning, stacklevel=3)
    return chosen


def check_use_safetensors(use_safetensors: Any, allow_pickle: bool) -> None:
    """ModelScope's ``use_safetensors``: True (or None) is what happens anyway; False needs allow_pickle."""
    if use_safetensors is None or use_safetensors is True:
        return
    if use_safetensors is not False:
        raise TypeError(f'use_safetensors must be True or False, got {use_safetensors!r}')
    if not allow_pickle:
        raise ValueError('use_safetensors=False: this pipeline reads .safetensors weights only, because pickle '
                         'weights (.bin, .ckpt) can run code when loaded. To read pickle weights where a folder has '
                         'no .safetensors, pass allow_pickle=True (only for files you trust)')
