"""Train the mini SDXL (base + refiner) from scratch on shapes this script draws itself.

    python -m modelscope_sdxl.mini.train --out DIR

writes DIR/base and DIR/refiner in the hub layout (the same diffusers classes,
folders and configuration.json as the real repos, via sdxl_folders.save_sdxl_pair)
and DIR/training_log.json. Everything is seeded; the defaults reproduce the
weights shipped in modelscope_sdxl/mini/model (docs/mini-model.md has the run's
time and figures). Stages, all on the CPU:

1. VAE: AutoencoderKL with SDXL's four blocks (scale factor 8: 64 px -> 8x8x4),
   trained on L1 + L2 reconstruction plus a small KL term, first on 32 px
   crops, then on whole images; its ``scaling_factor`` is then set to
   1 / std of the latents, as SD/SDXL chose theirs.
2. Latent data set: random scenes from scenes.py's grammar, drawn, encoded
   once (posterior mean and std), with their prompts and micro-conditioning.
3. Base: UNet2DConditionModel with SDXL's text-time conditioning (pooled text
   embedding + 6 time ids), epsilon prediction on the whole 1000-step schedule
   (SDXL's scaled-linear betas), Min-SNR-5 loss weights, 10% of prompts dropped
   to SDXL's zero embeddings for classifier-free guidance
   (``force_zeros_for_empty_prompt``). Both CLIP text encoders start random and
   train jointly with it for the first half of its steps, on the diffusion loss
   alone; then they keep their averaged weights and stay frozen.
4. Refiner (in a second process, from the moment the text encoders are frozen):
   a second UNet conditioned on text_encoder_2 only (shared with the base) and
   5 time ids (original size, crop, aesthetic score), trained on timesteps
   < 300 only, the low-noise end SDXL's refiner specialises in; dropped prompts
   use the encoding of "" as the refiner pipeline does. Aesthetic score: clean
   drawings are scored 5.5-8, degraded ones (blurred and noisy) 1-4, so the
   default 6.0 vs negative 2.5 steers towards clean edges.

Micro-conditioning: like SDXL's size conditioning, 30% of training images are
drawn at 32 or 48 px and upscaled to 64, with original_size saying so; crop
coordinates are always (0, 0) (no cropping is done).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .recipe import (EMA, IMAGE_SIZE, REFINER_MAX_TIMESTEP, Log, Tokens, build_latents, draw_images, encode_base,
                     encode_refiner, lr_at, min_snr_loss, mini_configs, noisy, set_lr)
from .scenes import Scene, random_scenes
from .sdxl_folders import PROMPT_WORDS, SDXL_SCHEDULER, clip_tokenizers, save_sdxl_pair, text_encoder_config


# ---------------------------------------------------------------------------- stages

def train_vae(vae: Any, steps: int, batch: int, lr: float, kl_weight: float, rng: np.random.Generator,
              gen: torch.Generator, log: Log, crop: int = 32, full_steps: int = 300) -> Dict[str, float]:
    """Train the VAE: `steps` on random 32 px crops (aligned to the 8 px latent grid; a quarter of
    the cost of a whole image, and the network is convolutional), then `full_steps` on whole
    64 px images at a lower learning rate."""
    vae.train()
    with torch.no_grad():
        # Start with a small posterior std (log-variance -6): with the default start (std ~1)
        # the decoder first sees mostly sampling noise and training crawls.
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] *= 0.1
        vae.quant_conv.bias[c:] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(vae.parameters(), decay=0.99)
    recent: List[float] = []
    total = steps + full_steps
    for step in range(total):
        whole = step >= steps
        set_lr(opt, [lr_at(step - steps, full_steps, lr * 0.3, warmup=1) if whole else lr_at(step, steps, lr)])
        degraded = rng.random() < 0.15
        x, _, _ = draw_images(random_scenes(rng, batch), rng, degraded=degraded)
        if not whole:
            top, left = rng.integers(0, (IMAGE_SIZE - crop) // 8 + 1, size=2) * 8
            x = x[:, :, top:top + crop, left:left + crop]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update()
        recent.append(F.l1_loss(rec, x).item())
        if (step + 1) % 100 == 0 or step + 1 == total:
            log(f'vae step {step + 1}/{total} ({"64 px" if whole else f"{crop} px crops"})  L1 {np.mean(recent):.4f}')
            recent = []
    ema.copy_to_params()
    vae.eval()
    # Final figure on fresh clean scenes, in 0-255 levels.
    with torch.no_grad():
        x, _, _ = draw_images(random_scenes(rng, 256), rng)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mae = ((rec - x).abs().mean() * 127.5).item()
    log(f'vae reconstruction error on clean scenes: {mae:.2f} / 255 per channel')
    return {'reconstruction_mae_255': mae}


def train_base(unet: Any, te1: Any, te2: Any, data: Dict[str, torch.Tensor], scale: float, steps: int,
               batch: int, lr: float, text_lr: float, alphas_cumprod: torch.Tensor, gen: torch.Generator,
               log: Log, text_steps: Optional[int] = None, on_text_frozen: Optional[Callable[[], None]] = None
               ) -> Dict[str, float]:
    """Train the base UNet; the text encoders train with it for the first `text_steps` steps, then
    take their averaged weights and stay frozen (`on_text_frozen` is called at that point)."""
    text_steps = steps if text_steps is None else min(text_steps, steps)
    text_params = list(te1.parameters()) + list(te2.parameters())
    for m in (unet, te1, te2):
        m.train()
    opt = torch.optim.AdamW([{'params': unet.parameters(), 'lr': lr}, {'params': text_params, 'lr': text_lr}],
                            weight_decay=0.01)
    unet_ema, text_ema = EMA(unet.parameters(), decay=0.998), EMA(text_params, decay=0.998)
    n = data['mean'].shape[0]
    recent: List[float] = []
    for step in range(steps):
        if step == text_steps:
            text_ema.copy_to_params()
            for m in (te1, te2):
                m.eval().requires_grad_(False)
            log(f'base step {step}: text encoders frozen')
            if on_text_frozen is not None:
                on_text_frozen()
        train_text = step < text_steps
        set_lr(opt, [lr_at(step, steps, lr), lr_at(min(step, text_steps - 1), text_steps, text_lr)])
        idx = torch.randint(0, n, (batch,), generator=gen)
        t = torch.randint(0, len(alphas_cumprod), (batch,), generator=gen)
        zt, noise, ab = noisy(data, idx, scale, t, alphas_cumprod, gen)
        with torch.set_grad_enabled(train_text):
            embeds, pooled = encode_base(te1, te2, data['ids1'][idx], data['ids2'][idx])
        keep = (torch.rand(batch, generator=gen) >= 0.1).float()
        embeds, pooled = embeds * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
        size = data['size'][idx]
        time_ids = torch.stack([size, size, torch.zeros(batch), torch.zeros(batch),
                                torch.full((batch,), float(IMAGE_SIZE)), torch.full((batch,), float(IMAGE_SIZE))], 1)
        pred = unet(zt, t, embeds, added_cond_kwargs={'text_embeds': pooled, 'time_ids': time_ids}).sample
        loss = min_snr_loss(pred, noise, ab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in opt.param_groups[0]['params'] + text_params
                                        if p.grad is not None], 1.0)
        opt.step()
        unet_ema.update()
        if train_text:
            text_ema.update()
        recent.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f'base step {step + 1}/{steps}  loss {np.mean(recent):.4f}')
            recent = []
    unet_ema.copy_to_params()
    if text_steps >= steps:
        text_ema.copy_to_params()
    for m in (unet, te1, te2):
        m.eval()
    return {}


def train_refiner(unet: Any, te2: Any, empty_ids: torch.Tensor, data: Dict[str, torch.Tensor], scale: float,
                  steps: int, batch: int, lr: float, alphas_cumprod: torch.Tensor, gen: torch.Generator,
                  log: Log) -> Dict[str, float]:
    unet.train()
    te2.eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    ema = EMA(unet.parameters(), decay=0.998)
    with torch.no_grad():
        empty_embeds, empty_pooled = encode_refiner(te2, empty_ids)
    n = data['mean'].shape[0]
    recent: List[float] = []
    for step in range(steps):
        set_lr(opt, [lr_at(step, steps, lr)])
        idx = torch.randint(0, n, (batch,), generator=gen)
        t = torch.randint(0, REFINER_MAX_TIMESTEP, (batch,), generator=gen)
        zt, noise, ab = noisy(data, idx, scale, t, alphas_cumprod, gen)
        with torch.no_grad():
            embeds, pooled = encode_refiner(te2, data['ids2'][idx])
        drop = torch.rand(batch, generator=gen) < 0.1
        embeds = torch.where(drop.view(-1, 1, 1), empty_embeds, embeds)
        pooled = torch.where(drop.view(-1, 1), empty_pooled, pooled)
        size = data['size'][idx]
        time_ids = torch.stack([size, size, torch.zeros(batch), torch.zeros(batch), data['score'][idx]], 1)
        pred = unet(zt, t, embeds, added_cond_kwargs={'text_embeds': pooled, 'time_ids': time_ids}).sample
        loss = min_snr_loss(pred, noise, ab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update()
        recent.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f'refiner step {step + 1}/{steps}  loss {np.mean(recent):.4f}')
            recent = []
    ema.copy_to_params()
    unet.eval()
    return {}


# ---------------------------------------------------------------------------- main

def _refiner_worker(job_path: str, result_path: str) -> None:
    """The refiner stage, run in its own process beside the base's last steps.

    It receives the frozen text_encoder_2, the VAE and the clean latents, encodes
    its own degraded scenes and trains the refiner UNet.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    job = torch.load(job_path, weights_only=False)
    torch.set_num_threads(job['threads'])
    log = Log(job['start'])
    rng = np.random.default_rng(job['seed'])
    gen = torch.Generator().manual_seed(job['seed'])
    start = time.time()
    vae = AutoencoderKL(**job['configs']['vae'])
    vae.load_state_dict(job['vae'])
    vae.eval().requires_grad_(False)
    te2 = CLIPTextModelWithProjection(text_encoder_config(job['configs']['text_encoder_2'], job['vocab']))
    te2.load_state_dict(job['text_encoder_2'])
    unet = UNet2DConditionModel(**job['configs']['unet_refiner'])
    unet.load_state_dict(job['unet'])
    tokens = Tokens(*(CLIPTokenizer.from_pretrained(os.path.join(job['tokenizer_dir'], name))
                      for name in ('tokenizer', 'tokenizer_2')))
    degraded = build_latents(vae, tokens, job['degraded_count'], degraded_share=1.0, rng=rng)
    log(f'refiner: {job["degraded_count"]} degraded scenes encoded')
    data = {k: torch.cat([job['data'][k], degraded[k]]) for k in degraded}
    train_refiner(unet, te2, job['empty_ids'], data, job['scale'], job['steps'], job['batch'], job['lr'],
                  job['alphas_cumprod'], gen, log)
    torch.save({'unet': unet.state_dict(), 'seconds': time.time() - start}, result_path)


def train(out: str, seed: int = 0, vae_steps: int = 4000, vae_full_steps: int = 500, vae_batch: int = 16,
          base_steps: int = 4000, text_steps: int = 2000, base_batch: int = 64, refiner_steps: int = 2000,
          refiner_batch: int = 64, data_size: int = 30000, threads: int = 1, evaluate: bool = True
          ) -> Dict[str, Any]:
    """Train every component and write `out`/base and `out`/refiner; return the training log.

    The refiner trains in a second process (each process uses `threads` torch
    threads) from the moment the text encoders are frozen, beside the base's
    remaining steps.
    """
    import multiprocessing

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.set_num_threads(threads)
    log = Log()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    configs = mini_configs()
    record: Dict[str, Any] = {
        'command': 'python -m modelscope_sdxl.mini.train ' + ' '.join(sys.argv[1:]),
        'seed': seed, 'threads_per_process': threads, 'torch': torch.__version__,
        'machine': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
        'steps': {'vae_crops': [vae_steps, vae_batch], 'vae_full': [vae_full_steps, vae_batch],
                  'base': [base_steps, base_batch], 'text_encoders': [text_steps, base_batch],
                  'refiner': [refiner_steps, refiner_batch]},
        'data_size': {'clean': data_size, 'degraded': data_size // 2}, 'seconds': {}}

    tmp = tempfile.mkdtemp(prefix='mini-sdxl-')
    refiner_proc = None
    try:
        vocab, tokenizer, tokenizer_2 = clip_tokenizers(os.path.join(tmp, 'tokenizers'), PROMPT_WORDS)
        tokens = Tokens(tokenizer, tokenizer_2)
        te1 = CLIPTextModel(text_encoder_config(configs['text_encoder'], vocab))
        te2 = CLIPTextModelWithProjection(text_encoder_config(configs['text_encoder_2'], vocab))
        vae = AutoencoderKL(**configs['vae'])
        unet = UNet2DConditionModel(**configs['unet_base'])
        refiner_unet = UNet2DConditionModel(**configs['unet_refiner'])
        record['parameters'] = {name: sum(p.numel() for p in m.parameters()) for name, m in (
            ('text_encoder', te1), ('text_encoder_2', te2), ('vae', vae), ('unet', unet),
            ('refiner_unet', refiner_unet))}
        log(f'parameters: {record["parameters"]}')
        alphas_cumprod = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER).alphas_cumprod.float()

        t0 = time.time()
        record['vae'] = train_vae(vae, vae_steps, vae_batch, 1e-3, 1e-5, rng, gen, log, full_steps=vae_full_steps)
        vae.requires_grad_(False)
        record['seconds']['vae'] = time.time() - t0

        t0 = time.time()
        data = build_latents(vae, tokens, data_size, degraded_share=0.0, rng=rng)
        sample = data['mean'] + data['std'] * torch.randn(data['mean'].shape, generator=gen)
        scale = float(1.0 / sample.std())
        vae.register_to_config(scaling_factor=scale)
        record['vae']['scaling_factor'] = scale
        record['seconds']['latents'] = time.time() - t0
        log(f'{data_size} scenes encoded; latent scaling_factor {scale:.5f}')

        job_path, result_path = os.path.join(tmp, 'refiner-job.pt'), os.path.join(tmp, 'refiner-result.pt')

        def start_refiner() -> None:
            nonlocal refiner_proc
            torch.save({
                'threads': threads, 'start': log.start, 'seed': seed + 1, 'configs': configs, 'vocab': vocab,
                'tokenizer_dir': os.path.join(tmp, 'tokenizers'),
                'vae': vae.state_dict(), 'text_encoder_2': te2.state_dict(), 'unet': refiner_unet.state_dict(),
                'data': data, 'degraded_count': data_size // 2, 'empty_ids': tokens([''])[1], 'scale': scale,
                'steps': refiner_steps, 'batch': refiner_batch, 'lr': 1e-3, 'alphas_cumprod': alphas_cumprod,
            }, job_path)
            refiner_proc = multiprocessing.get_context('spawn').Process(
                target=_refiner_worker, args=(job_path, result_path))
            refiner_proc.start()

        t0 = time.time()
        record['base'] = train_base(unet, te1, te2, data, scale, base_steps, base_batch, 1e-3, 5e-4,
                                    alphas_cumprod, gen, log, text_steps=text_steps, on_text_frozen=start_refiner)
        record['seconds']['base'] = time.time() - t0
        if refiner_proc is None:
            start_refiner()
        refiner_proc.join()
        if refiner_proc.exitcode != 0:
            raise RuntimeError(f'refiner training failed (exit code {refiner_proc.exitcode})')
        result = torch.load(result_path, weights_only=False)
        refiner_unet.load_state_dict(result['unet'])
        record['seconds']['refiner'] = result['seconds']
        record['seconds']['total'] = time.time() - log.start

        for m in (te1, te2, vae, unet, refiner_unet):
            m.eval().requires_grad_(False)
        base_dir, refiner_dir = save_sdxl_pair(
            out, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer_2, vae=vae,
            unet=unet, refiner_unet=refiner_unet, tokenizer_dir=os.path.join(tmp, 'tokenizers'),
            refiner_ref='../refiner')
    finally:
        if refiner_proc is not None and refiner_proc.is_alive():
            refiner_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'saved {base_dir} and {refiner_dir}; training took {record["seconds"]["total"] / 60:.1f} min')
    _check_encoding(base_dir, tokens, te1, te2)

    if evaluate:
        from .quality import evaluate_folder
        record['quality'] = evaluate_folder(base_dir)
        for mode, report in record['quality'].items():
            log(f'{mode}: {report}')
    with open(os.path.join(out, 'training_log.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2)
        f.write('\n')
    return record


@torch.no_grad()
def _check_encoding(base_dir: str, tokens: Tokens, te1: Any, te2: Any) -> None:
    """The embeddings the model was trained on are the ones the saved pipeline computes."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(base_dir, use_safetensors=True, add_watermarker=False)
    prompt = Scene('red', 'circle', 'blue', position='top left').prompt()
    ours = encode_base(te1, te2, *tokens([prompt]))
    theirs = pipe.encode_prompt(prompt, device=torch.device('cpu'), do_classifier_free_guidance=False)
    for a, b in zip(ours, (theirs[0], theirs[2])):
        if not torch.allclose(a, b, atol=1e-5):
            raise RuntimeError('training-time prompt encoding differs from the saved pipeline\'s')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m modelscope_sdxl.mini.train',
                                     description=(__doc__ or '').split('\n')[0])
    parser.add_argument('--out', required=True, help='output folder; base/ and refiner/ are written inside')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--vae-steps', type=int, default=4000, help='VAE steps on 32 px crops')
    parser.add_argument('--vae-full-steps', type=int, default=500, help='VAE steps on whole 64 px images')
    parser.add_argument('--base-steps', type=int, default=4000)
    parser.add_argument('--text-steps', type=int, default=2000,
                        help='base steps during which the text encoders train too')
    parser.add_argument('--refiner-steps', type=int, default=2000)
    parser.add_argument('--data-size', type=int, default=30000, help='clean scenes encoded for the UNets')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads per process')
    parser.add_argument('--no-eval', action='store_true', help='skip the quality check at the end')
    args = parser.parse_args(argv)
    train(args.out, seed=args.seed, vae_steps=args.vae_steps, vae_full_steps=args.vae_full_steps,
          base_steps=args.base_steps, text_steps=args.text_steps, refiner_steps=args.refiner_steps,
          data_size=args.data_size, threads=args.threads, evaluate=not args.no_eval)
    return 0


if __name__ == '__main__':
    sys.exit(main())
