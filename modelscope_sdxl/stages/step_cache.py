"""Step caching: reuse the UNet's deep features between steps (the idea of DeepCache, Ma et al. 2023).

Between neighbouring denoising steps the UNet's deep, low-resolution features barely
change, while almost all of its work (every transformer block) happens there. With
``step_cache=N`` one UNet call in N runs in full; the others run only the outermost
level (``conv_in``, ``down_blocks[0]``, ``up_blocks[-1]``, ``conv_out``) and take
everything deeper (``down_blocks[1:]``, ``mid_block``, ``up_blocks[:-1]``) from the
last full call. It is lossy: a speed/quality trade-off, off by default.

The cache lives on a per-call shallow copy of the UNet whose deep blocks are wrapped;
the loaded UNet is never modified, so concurrent calls without the cache are unaffected.
A compiled UNet (``compile_unet``) runs uncompiled for a call that uses the cache.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Optional, Tuple

import torch
from torch import nn


class _CacheState:
    """Which UNet call this is, and whether it may reuse the deep features of the last full call."""

    def __init__(self, interval: int):
        self.interval = interval
        self.calls = 0
        self.reuse = False
        self._key: Optional[Tuple[Any, ...]] = None

    def begin_call(self, sample: torch.Tensor) -> None:
        key = (tuple(sample.shape), sample.dtype, sample.device)
        self.reuse = self.calls % self.interval != 0 and key == self._key
        self._key = key
        self.calls += 1


class _CachedBlock(nn.Module):
    """A UNet block that returns its output from the last full call when the state says so."""

    def __init__(self, block: nn.Module, state: _CacheState, first: bool = False):
        super().__init__()
        self.block = block
        self._state = state
        self._first = first  # the first deep block of each UNet call starts the call
        self._output: Any = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self._first:
            self._state.begin_call(hidden_states)
        if self._state.reuse and self._output is not None:
            return self._output
        self._output = self.block(hidden_states, *args, **kwargs)
        return self._output

    def __getattr__(self, name: str) -> Any:
        # UNet2DConditionModel.forward reads `resnets` and `has_cross_attention` of its blocks.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['block'], name)


def with_step_cache(unet: nn.Module, interval: int) -> nn.Module:
    """`unet` itself for interval 1; else a copy sharing its weights that runs in full one call in `interval`.

    The copy is for one stage of one call: its cache starts empty, so the stage's first call runs in full.
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f'step_cache must be an integer >= 1, got {interval!r}')
    if interval == 1:
        return unet
    unet = getattr(unet, '_orig_mod', unet)  # torch.compile's wrapper: cache the eager module
    down, up = getattr(unet, 'down_blocks', None), getattr(unet, 'up_blocks', None)
    if down is None or up is None or len(down) < 2 or len(up) < 2 or getattr(unet, 'mid_block', None) is None:
        raise ValueError(f'step_cache needs a UNet with at least two down and up blocks and a mid block, '
                         f'got {type(unet).__name__}')
    state = _CacheState(interval)
    clone = copy.copy(unet)
    clone.__dict__['_modules'] = OrderedDict(unet._modules)  # replacing blocks below leaves `unet` untouched
    clone.down_blocks = nn.ModuleList([down[0]] + [_CachedBlock(b, state, first=i == 0)
                                                   for i, b in enumerate(down[1:])])
    clone.mid_block = _CachedBlock(unet.mid_block, state)
    clone.up_blocks = nn.ModuleList([_CachedBlock(b, state) for b in up[:-1]] + [up[-1]])
    clone.step_cache_state = state
    return clone
