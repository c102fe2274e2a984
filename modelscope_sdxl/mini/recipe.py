"""The mini model's recipe: its configs, its training data (drawn scenes and their latents), its
prompt encodings, and the aids every stage of ``train.py`` shares (EMA, learning-rate schedule,
Min-SNR loss weights, the log)."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .scenes import Scene, random_scenes, render
from .sdxl_folders import pair_configs

IMAGE_SIZE = 64
# SDXL's text encoders are CLIP ViT-L (quick_gelu) and OpenCLIP bigG (gelu, with projection); the
# UNet reads the penultimate layer of each, so text_encoder's last layer is kept but unused, as in SDXL.
MINI_TEXT_ENCODER: Dict[str, Any] = dict(
    hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=32)
MINI_TEXT_ENCODER_2: Dict[str, Any] = dict(
    hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=77, hidden_act='gelu', projection_dim=32)
MINI_VAE: Dict[str, Any] = dict(
    block_out_channels=[8, 16, 32, 32], in_channels=3, out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4,
    latent_channels=4, layers_per_block=1, norm_num_groups=1, sample_size=IMAGE_SIZE,
    scaling_factor=1.0, force_upcast=True)
# SDXL's layout scaled down: no attention at the top level, cross-attention below it.
MINI_UNET: Dict[str, Any] = dict(
    sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[32, 64, 64],
    down_block_types=['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
    up_block_types=['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'],
    attention_head_dim=[1, 2, 2], transformer_layers_per_block=[1, 1, 1], use_linear_projection=True,
    addition_embed_type='text_time', addition_time_embed_dim=16, norm_num_groups=8)
REFINER_MAX_TIMESTEP = 300
SIZE_CHOICES = (64, 48, 32)
SIZE_PROBS = (0.7, 0.15, 0.15)


def mini_configs() -> Dict[str, Dict[str, Any]]:
    """Component configs of the mini pair, in the layout of sdxl_folders.tiny_configs()."""
    return pair_configs(MINI_TEXT_ENCODER, MINI_TEXT_ENCODER_2, MINI_VAE, MINI_UNET)


# ---------------------------------------------------------------------------- data

def draw_images(scenes: Sequence[Scene], rng: np.random.Generator, degraded: bool = False
                ) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Scenes -> (images in [-1, 1] (N, 3, 64, 64), original sizes, aesthetic scores).

    Each image is drawn at its original size (64, 48 or 32 px) and upscaled to 64.
    Degraded images are drawn at 12-24 px, upscaled and given noise. (Their colours are kept:
    with washed-out colours among the low scores, the refiner's aesthetic guidance pushed
    colours the other way, tinting white shapes yellow and black ones purple.)
    """
    n = len(scenes)
    sizes = rng.choice(SIZE_CHOICES, size=n, p=SIZE_PROBS)
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    if degraded:
        draw_sizes = rng.choice([12, 16, 24], size=n)
        scores = rng.uniform(1.0, 4.0, size=n)
    else:
        draw_sizes = sizes
        scores = rng.uniform(5.5, 8.0, size=n)
    for s in np.unique(draw_sizes):
        idx = np.nonzero(draw_sizes == s)[0]
        img = torch.from_numpy(render([scenes[i] for i in idx], size=int(s), rng=rng)).permute(0, 3, 1, 2)
        if s != IMAGE_SIZE:
            img = F.interpolate(img, size=(IMAGE_SIZE, IMAGE_SIZE), mode='bilinear', align_corners=False)
        out[torch.from_numpy(idx)] = img
    if degraded:
        sigma = torch.from_numpy(rng.uniform(0.02, 0.08, size=(n, 1, 1, 1))).float()
        out = out + sigma * torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    return (out.clamp(0, 1) * 2 - 1), sizes.astype(np.float32), scores.astype(np.float32)


class Tokens:
    """Token ids of both tokenizers, padded to 77 exactly as diffusers' encode_prompt pads them."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any):
        self.tokenizers = (tokenizer, tokenizer_2)
        self.cache: Dict[str, Tuple[List[int], List[int]]] = {}

    def __call__(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        missing = sorted(set(prompts) - set(self.cache))
        if missing:
            ids = [t(missing, padding='max_length', max_length=t.model_max_length, truncation=True).input_ids
                   for t in self.tokenizers]
            for p, a, b in zip(missing, *ids):
                self.cache[p] = (a, b)
        return (torch.tensor([self.cache[p][0] for p in prompts]),
                torch.tensor([self.cache[p][1] for p in prompts]))


def encode_base(te1: Any, te2: Any, ids1: torch.Tensor, ids2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) as StableDiffusionXLPipeline.encode_prompt computes them."""
    out1 = te1(ids1, output_hidden_states=True)
    out2 = te2(ids2, output_hidden_states=True)
    return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2.text_embeds


def encode_refiner(te2: Any, ids2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) as StableDiffusionXLImg2ImgPipeline.encode_prompt computes them."""
    out2 = te2(ids2, output_hidden_states=True)
    return out2.hidden_states[-2], out2.text_embeds


# ---------------------------------------------------------------------------- helpers

class EMA:
    """Exponential moving average of parameters (decay warmed up as in common diffusion training)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Log:
    """Progress lines stamped with seconds since `start` (default: now)."""

    def __init__(self, start: Optional[float] = None) -> None:
        self.start = time.time() if start is None else start

    def __call__(self, msg: str) -> None:
        print(f'[{time.time() - self.start:7.1f}s] {msg}', flush=True)


def set_lr(opt: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    for group, lr in zip(opt.param_groups, lrs):
        group['lr'] = lr


@torch.no_grad()
def build_latents(vae: Any, tokens: Tokens, count: int, degraded_share: float, rng: np.random.Generator,
                  chunk: int = 500) -> Dict[str, torch.Tensor]:
    """Draw `count` scenes and encode them once: posterior mean/std, token ids, time-id values."""
    means, stds, ids1, ids2, sizes, scores = [], [], [], [], [], []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        scenes = random_scenes(rng, n)
        degraded = rng.random(n) < degraded_share
        x = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
        size = np.empty(n, np.float32)
        score = np.empty(n, np.float32)
        for flag in (False, True):
            idx = np.nonzero(degraded == flag)[0]
            if len(idx):
                xi, si, ai = draw_images([scenes[i] for i in idx], rng, degraded=flag)
                x[torch.from_numpy(idx)] = xi
                size[idx], score[idx] = si, ai
        dist = vae.encode(x).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        a, b = tokens([s.prompt() for s in scenes])
        ids1.append(a)
        ids2.append(b)
        sizes.append(torch.from_numpy(size))
        scores.append(torch.from_numpy(score))
    return {'mean': torch.cat(means), 'std': torch.cat(stds), 'ids1': torch.cat(ids1), 'ids2': torch.cat(ids2),
            'size': torch.cat(sizes), 'score': torch.cat(scores)}


def noisy(data: Dict[str, torch.Tensor], idx: torch.Tensor, scale: float, t: torch.Tensor,
           alphas_cumprod: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean, std = data['mean'][idx], data['std'][idx]
    z0 = (mean + std * torch.randn(mean.shape, generator=gen)) * scale
    noise = torch.randn(z0.shape, generator=gen)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise, noise, ab.view(-1)


def min_snr_loss(pred: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    snr = ab / (1 - ab)
    weight = torch.clamp(snr, max=gamma) / snr
    return (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
