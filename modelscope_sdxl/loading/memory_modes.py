"""Where the networks live during a call: all resident, loaded per stage from disk, or moved per stage.

SDXL base + refiner hold about 22.9 GB of fp32 weights, more than a 24 GB machine
can keep resident next to its activations. Each stage needs only part of them:
the text encoders to encode the prompt, then the base UNet, then the refiner UNet.

- ``resident``: everything loaded once and kept (fastest; the default where it fits).
- ``lean`` (CPU): the VAE, tokenizers and schedulers stay resident; the text
  encoders and each UNet are read from their ``.safetensors`` files for their stage
  and released after it, so peak memory is one UNet, not all networks. Each step
  runs exactly as when resident (same fp32 weights), the cost is reading the
  weights once per call.
- ``offload`` (CUDA): everything is loaded in RAM, and each stage's networks are
  moved to the GPU for their stage only (diffusers' model offload, per stage).

Calls on a lean or offload pipeline run one at a time, so only one stage's
weights are ever in place.
"""
from __future__ import annotations

import contextlib
import gc
import os
import threading
from typing import Any, Iterator, Optional, Tuple

import torch

from .components import with_modules

MEMORY_MODES = ('auto', 'resident', 'lean', 'offload')


def weights_bytes(folder: str, components: Tuple[str, ...]) -> int:
    """Bytes of the components' .safetensors files in `folder` (what resident fp32 weights take in RAM)."""
    total = 0
    for component in components:
        sub = os.path.join(folder, component)
        if os.path.isdir(sub):
            total += sum(os.path.getsize(os.path.join(sub, f)) for f in os.listdir(sub) if f.endswith('.safetensors'))
    return total


def choose_memory_mode(requested: str, device: torch.device, base_dir: str, refiner_dir: Optional[str]) -> str:
    """'auto' -> lean on a CPU whose RAM cannot comfortably hold every network, else resident."""
    if requested not in MEMORY_MODES:
        raise ValueError(f'memory_mode must be one of {", ".join(map(repr, MEMORY_MODES))}, got {requested!r}')
    if requested == 'lean' and device.type != 'cpu':
        raise ValueError("memory_mode='lean' is for the CPU; on CUDA use memory_mode='offload'")
    if requested == 'offload' and device.type != 'cuda':
        raise ValueError("memory_mode='offload' moves networks to a GPU; on the CPU use memory_mode='lean'")
    if requested != 'auto':
        return requested
    if device.type != 'cpu':
        return 'resident'
    import psutil

    needed = weights_bytes(base_dir, ('unet', 'vae', 'text_encoder', 'text_encoder_2'))
    if refiner_dir is not None:
        needed += weights_bytes(refiner_dir, ('unet',))
    return 'lean' if needed > 0.5 * psutil.virtual_memory().total else 'resident'


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Resident:
    """Every network loaded once and kept where it runs."""

    def __init__(self, components: Any):
        self.components = components

    def lock(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def encoders(self) -> Iterator[Tuple[Any, Optional[Any]]]:
        """(base, refiner) pipelines whose text encoders are in place."""
        yield self.components.base, self.components.refiner

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        """The stage's pipeline with its UNet in place."""
        yield getattr(self.components, name)


class _OneCallAtATime(Resident):
    """Calls run one at a time, so only one stage's networks are ever in place."""

    def __init__(self, components: Any):
        super().__init__(components)
        self._lock = threading.Lock()

    def lock(self) -> contextlib.AbstractContextManager:
        return self._lock


class Lean(_OneCallAtATime):
    """CPU: text encoders and UNets read from disk for their stage and released after it."""

    def _load(self, cls: Any, folder: str, component: str) -> Any:
        return cls.from_pretrained(os.path.join(folder, component), dtype=self.components.dtype,
                                   use_safetensors=True).eval()

    @contextlib.contextmanager
    def encoders(self) -> Iterator[Tuple[Any, Optional[Any]]]:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        c = self.components
        text_encoder = self._load(CLIPTextModel, c.base_dir, 'text_encoder')
        text_encoder_2 = self._load(CLIPTextModelWithProjection, c.base_dir, 'text_encoder_2')
        base = refiner = None
        try:
            base = with_modules(c.base, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
            refiner = None if c.refiner is None else with_modules(c.refiner, text_encoder_2=text_encoder_2)
            yield base, refiner
        finally:
            for pipe in (base, refiner):
                if pipe is not None:
                    pipe.text_encoder_2 = None
            if base is not None:
                base.text_encoder = None
            del text_encoder, text_encoder_2, base, refiner
            _release()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        from diffusers import UNet2DConditionModel

        c = self.components
        pipe = getattr(c, name)
        unet = self._load(UNet2DConditionModel, c.base_dir if name == 'base' else c.refiner_dir, 'unet')
        stage_pipe = None
        try:
            stage_pipe = with_modules(pipe, unet=unet)
            yield stage_pipe
        finally:
            if stage_pipe is not None:
                stage_pipe.unet = None
            del unet, stage_pipe
            _release()


class Offload(_OneCallAtATime):
    """CUDA: networks wait in RAM and are moved to the GPU for their stage only."""

    @contextlib.contextmanager
    def _on_device(self, *modules: Any) -> Iterator[None]:
        for m in modules:
            m.to(self.components.device)
        try:
            yield
        finally:
            for m in modules:
                m.to('cpu')
            _release()

    @contextlib.contextmanager
    def encoders(self) -> Iterator[Tuple[Any, Optional[Any]]]:
        c = self.components
        with self._on_device(c.base.text_encoder, c.base.text_encoder_2):
            yield c.base, c.refiner

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        pipe = getattr(self.components, name)
        with self._on_device(pipe.unet):
            yield pipe


RESIDENCIES = {'resident': Resident, 'lean': Lean, 'offload': Offload}
