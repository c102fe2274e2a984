"""Benchmark: this package's pipeline against plain diffusers, interleaved in one run.

    python benchmarks/run.py                       # tiny and mid-size: prints Markdown tables
    python benchmarks/run.py --scales tiny mid full --repeats 3 --markdown results.md
    python benchmarks/run.py --scales mid --variants default step_cache

It prints the tables (and with --markdown writes them to a file); docs/performance.md
quotes them next to the analysis of what they mean, which is written by hand.

Each measurement runs in a fresh child process (so load time and peak RSS are its
own), alternating ours and diffusers. Plain diffusers is written the way its docs
teach: StableDiffusionXLPipeline + StableDiffusionXLImg2ImgPipeline sharing
text_encoder_2 and the VAE, the base handing latents to the refiner. Both make
the same images from the same folders, parameters and seed; the benchmark checks
that they agree within 2/255 per pixel.

For every scale the run also measures this machine's fp32 GEMM rate (a 2048 x 2048
torch.mm, same thread count as the children) and counts each UNet step's FLOPs
(torch's FlopCounterMode on a meta-device copy of the UNet), and prints the UNet
step's share of that rate: a slow kernel or a regression in diffusers shows at once.

At full size the two resident pipelines do not fit in 24 GB, so diffusers is
measured per stage (a base-only run, and a refiner-only run on the same latents
shape): that gives the "everything resident" step times the lean mode is compared with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FULL_CONFIGS = os.path.join(ROOT, 'benchmarks', 'sdxl-full-size-configs.json')  # SDXL 1.0's component configs

SCALES = {
    # scale: generation parameters
    'tiny': {'height': 64, 'width': 64, 'num_inference_steps': 20},
    'mid': {'height': 512, 'width': 512, 'num_inference_steps': 6, 'high_noise_frac': 0.5},
    'full': {'height': 512, 'width': 512, 'num_inference_steps': 4, 'high_noise_frac': 0.5},
}
# Generations timed per child process (after one untimed warm-up where a generation is cheap).
TIMED = {'tiny': 7, 'mid': 1, 'full': 1}
PROMPT = 'a red circle on a blue background, high quality'
NEGATIVE = 'blurry'
SEED = 1234


# --- child processes: one measurement each ----------------------------------------------------------------------


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB, the memory figure every benchmark reports."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def _step_times(stamps: List[float], average: Any = None) -> Optional[float]:
    """Median (or `average`) time per step from the step-end timestamps of one stage (the first step
    includes set-up)."""
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    return (average or statistics.median)(diffs) if diffs else None


def gemm_flops_per_s(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate now: the best of `repeats` size x size torch.mm."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def unet_step_flops(unet_config: Dict[str, Any], height: int, width: int, time_ids: int, batch: int = 2,
                    step_cache: int = 1, cached_call: bool = False) -> float:
    """FLOPs of one UNet call on a latent of the image size, counted on the meta device (no weights are
    made). batch 2: guidance on; time_ids: 6 for SDXL's base, 5 for its refiner (aesthetic score).
    cached_call: the FLOPs of a call that reuses deep features under step_cache (the second call)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in unet_config.items() if not k.startswith('_')}
    with torch.device('meta'):
        unet = UNet2DConditionModel(**config)
    text_embeds = config['projection_class_embeddings_input_dim'] - time_ids * config['addition_time_embed_dim']
    meta = dict(device='meta')
    inputs = dict(sample=torch.zeros(batch, config['in_channels'], height // 8, width // 8, **meta),
                  timestep=torch.tensor(500.0, **meta),
                  encoder_hidden_states=torch.zeros(batch, 77, config['cross_attention_dim'], **meta),
                  added_cond_kwargs={'text_embeds': torch.zeros(batch, text_embeds, **meta),
                                     'time_ids': torch.zeros(batch, time_ids, **meta)})
    if cached_call:
        from modelscope_sdxl.stages.step_cache import with_step_cache

        unet = with_step_cache(unet, max(step_cache, 2))
        unet(**inputs)  # the full call that fills the cache
    with FlopCounterMode(display=False) as counter:
        unet(**inputs)
    return float(counter.get_total_flops())


def child_ours(base: str, params: Dict[str, Any], variant: str, timed: int) -> Dict[str, Any]:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    import modelscope_sdxl  # noqa: F401
    from modelscope.pipelines import pipeline

    kwargs = {'memory_mode': 'auto'} if variant != 'resident' else {'memory_mode': 'resident'}
    call_extra = {'step_cache': 2} if variant == 'step_cache' else {}
    pipe = pipeline(task='text-to-image-synthesis', model=base, device='cpu', **kwargs)
    if variant == 'channels_last':
        for p in (pipe.model.components.base, pipe.model.components.refiner):
            p.unet.to(memory_format=torch.channels_last)
    if variant == 'fused_qkv':
        for p in (pipe.model.components.base, pipe.model.components.refiner):
            p.unet.fuse_qkv_projections()
    load = time.perf_counter() - t0
    stamps: Dict[str, List[float]] = {'base': [], 'refiner': []}

    def on_step(stage: str, step: int, total: int) -> None:
        stamps[stage].append(time.perf_counter())  # the dict of the current generation

    call = {'text': PROMPT, 'negative_prompt': NEGATIVE, 'seed': SEED, **params, **call_extra}
    if timed > 1:
        pipe(call)  # warm-up
    walls = []
    for _ in range(timed):
        stamps = {'base': [], 'refiner': []}
        t1 = time.perf_counter()
        out = pipe(call, callback=on_step)
        walls.append(time.perf_counter() - t1)
    wall = statistics.median(walls)
    rgb = np.stack([img[:, :, ::-1] for img in out['output_imgs']])
    # With step_cache, full and cached steps alternate: their mean is the cost of a step.
    per_step = statistics.mean if variant == 'step_cache' else None
    return {'load_s': load, 'wall_s': wall, 'base_step_s': _step_times(stamps['base'], per_step),
            'refiner_step_s': _step_times(stamps['refiner'], per_step), 'images': rgb,
            'memory_mode': pipe.model.components.memory_mode}


def child_diffusers(base: str, refiner: str, params: Dict[str, Any], part: str, timed: int) -> Dict[str, Any]:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    stamps: Dict[str, List[float]] = {'base': [], 'refiner': []}

    def recorder(stage: str) -> Any:
        def on_step(pipe: Any, i: int, t: Any, tensors: Dict[str, Any]) -> Dict[str, Any]:
            stamps[stage].append(time.perf_counter())
            return tensors
        return on_step

    frac = params.get('high_noise_frac', 0.8)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=params['num_inference_steps'])
    if part in ('both', 'base'):
        base_pipe = StableDiffusionXLPipeline.from_pretrained(base, use_safetensors=True)
        base_pipe.set_progress_bar_config(disable=True)
    if part in ('both', 'refiner'):
        if part == 'both':
            shared = {'text_encoder_2': base_pipe.text_encoder_2, 'vae': base_pipe.vae}
        else:  # the refiner repo's own copies are the base's: load them from the base folder
            from diffusers import AutoencoderKL
            from transformers import CLIPTextModelWithProjection
            shared = {'text_encoder_2': CLIPTextModelWithProjection.from_pretrained(os.path.join(base, 'text_encoder_2')),
                      'vae': AutoencoderKL.from_pretrained(os.path.join(base, 'vae'))}
        refiner_pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner, use_safetensors=True, **shared)
        refiner_pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0
    def generate() -> Any:
        generator = torch.Generator('cpu').manual_seed(SEED)
        if part in ('both', 'base'):
            latents = base_pipe(**common, height=params['height'], width=params['width'], denoising_end=frac,
                                output_type='latent', generator=generator,
                                callback_on_step_end=recorder('base')).images
        else:
            latents = torch.randn(1, 4, params['height'] // 8, params['width'] // 8, generator=generator)
        if part in ('both', 'refiner'):
            return refiner_pipe(**common, image=latents, denoising_start=frac, generator=generator,
                                output_type='np', callback_on_step_end=recorder('refiner')).images
        return None

    if timed > 1:
        generate()  # warm-up
    walls = []
    for _ in range(timed):
        stamps['base'].clear()
        stamps['refiner'].clear()
        t1 = time.perf_counter()
        images = generate()
        walls.append(time.perf_counter() - t1)
    wall = statistics.median(walls)
    rgb = None if images is None or part != 'both' else (images * 255).round().astype(np.uint8)
    return {'load_s': load, 'wall_s': wall, 'base_step_s': _step_times(stamps['base']),
            'refiner_step_s': _step_times(stamps['refiner']), 'images': rgb}


def child_main(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == 'gemm':
        print('RESULT ' + json.dumps({'gemm_flops_per_s': gemm_flops_per_s(args.threads)}))
        return
    params = json.loads(args.params)
    if args.impl == 'ours':
        result = child_ours(args.base, params, args.variant, args.timed)
    else:
        result = child_diffusers(args.base, args.refiner, params, args.part, args.timed)
    images = result.pop('images')
    if images is not None:
        np.save(args.images, images)
    result['peak_rss_gb'] = peak_rss_gb()
    print('RESULT ' + json.dumps(result))


# --- parent: interleave, compare, report --------------------------------------------------------------------------


def run_child(impl: str, base: str, refiner: str, params: Dict[str, Any], images: str, part: str = 'both',
              variant: str = 'default', threads: int = 0, timed: int = 1) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), '_child', '--impl', impl, '--base', base, '--refiner', refiner,
           '--params', json.dumps(params), '--images', images, '--part', part, '--variant', variant,
           '--threads', str(threads), '--timed', str(timed)]
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {'error': f'exit {proc.returncode} (killed: out of memory?)' if proc.returncode < 0
                else f'exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ""}'}
    return json.loads(lines[-1][len('RESULT '):])


def median_of(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def max_diff(a: str, b: str) -> Optional[int]:
    import numpy as np

    if not (os.path.exists(a) and os.path.exists(b)):
        return None
    return int(np.abs(np.load(a).astype(int) - np.load(b).astype(int)).max())


def bench_scale(scale: str, base: str, refiner: str, repeats: int, work: str,
                variants: List[str], threads: int = 0) -> Dict[str, Any]:
    params = SCALES[scale]
    result: Dict[str, Any] = {'scale': scale, 'params': params, 'rows': {}}
    impls = [('diffusers', {})] + [(f'ours:{v}', {'variant': v}) for v in variants]
    if scale == 'full':
        impls = [('ours:default', {'variant': 'default'}), ('diffusers:base-only', {'part': 'base'}),
                 ('diffusers:refiner-only', {'part': 'refiner'})]
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name, _ in impls}
    gemm = [run_child('gemm', base, refiner, {}, '', threads=threads).get('gemm_flops_per_s')]
    for r in range(repeats):
        for name, extra in impls:
            impl = name.split(':')[0]
            images = os.path.join(work, f'{scale}-{name.replace(":", "-")}.npy')
            print(f'[{scale}] run {r + 1}/{repeats}: {name}', file=sys.stderr, flush=True)
            runs[name].append(run_child(impl, base, refiner, params, images, timed=TIMED[scale], threads=threads,
                                         **extra))
    for name, rs in runs.items():
        errors = [x['error'] for x in rs if 'error' in x]
        row = {k: median_of(rs, k) for k in ('wall_s', 'load_s', 'base_step_s', 'refiner_step_s', 'peak_rss_gb')}
        row['runs'] = len(rs) - len(errors)
        row['error'] = errors[0] if errors else None
        row['memory_mode'] = next((x.get('memory_mode') for x in rs if x.get('memory_mode')), None)
        if name.startswith('ours') and scale != 'full':
            row['max_pixel_diff_vs_diffusers'] = max_diff(
                os.path.join(work, f'{scale}-{name.replace(":", "-")}.npy'), os.path.join(work, f'{scale}-diffusers.npy'))
        result['rows'][name] = row
    gemm.append(run_child('gemm', base, refiner, {}, '', threads=threads).get('gemm_flops_per_s'))
    # The machine's best rate of the two (before and after the rows): the share is never flattered.
    result['gemm_flops_per_s'] = max((g for g in gemm if g), default=None)
    result['unet_step_flops'] = {}
    for stage, folder, time_ids in (('base', base, 6), ('refiner', refiner, 5)):
        with open(os.path.join(folder, 'unet', 'config.json'), encoding='utf-8') as f:
            result['unet_step_flops'][stage] = unet_step_flops(json.load(f), params['height'], params['width'],
                                                               time_ids)
    for name, row in result['rows'].items():
        for stage in ('base', 'refiner'):
            # A step_cache row's steps do fewer FLOPs than counted: no share for it.
            step_s = row.get(f'{stage}_step_s') if name != 'ours:step_cache' else None
            row[f'{stage}_gemm_share'] = (result['unet_step_flops'][stage] / step_s / result['gemm_flops_per_s']
                                          if step_s and result['gemm_flops_per_s'] else None)
    return result


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import psutil
    return (f'{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 1024 ** 3:.0f} GiB RAM, '
            f'torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}')


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return '—' if value is None else f'{value:.{digits}g}'


def _pct(share: Optional[float]) -> str:
    return '—' if share is None else f'{100 * share:.0f}%'


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return '—' if a is None or b is None or b == 0 else f'{a / b:.3f}'


def markdown(results: List[Dict[str, Any]], header: str) -> str:
    lines = [header, '']
    for res in results:
        p = res['params']
        lines += [f"### {res['scale']} — {p['height']}x{p['width']}, {p['num_inference_steps']} steps, ensemble "
                  f"(high_noise_frac {p.get('high_noise_frac', 0.8)}), guidance on", '',
                  f"fp32 GEMM rate (2048² torch.mm): {_fmt((res.get('gemm_flops_per_s') or 0) / 1e9)} GFLOP/s; "
                  f"UNet step (batch 2): base {_fmt(res['unet_step_flops']['base'] / 1e9)} GFLOP, refiner "
                  f"{_fmt(res['unet_step_flops']['refiner'] / 1e9)} GFLOP.", '',
                  '| run | wall s / image | base s / step | refiner s / step | UNet step / GEMM rate (base, refiner) '
                  '| load s | peak RSS GB | memory mode | ours / diffusers wall | max pixel diff | note |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        ref = res['rows'].get('diffusers', {})
        for name, row in res['rows'].items():
            ratio = _ratio(row['wall_s'], ref.get('wall_s')) if name.startswith('ours') and ref else ''
            lines.append(
                f"| {name} | {_fmt(row['wall_s'])} | {_fmt(row['base_step_s'])} | {_fmt(row['refiner_step_s'])} | "
                f"{_pct(row.get('base_gemm_share'))}, {_pct(row.get('refiner_gemm_share'))} | "
                f"{_fmt(row['load_s'])} | {_fmt(row['peak_rss_gb'])} | {row.get('memory_mode') or ''} | {ratio} | "
                f"{row.get('max_pixel_diff_vs_diffusers', '') if row.get('max_pixel_diff_vs_diffusers') is not None else ''} | "
                f"{row['error'] or ('step_cache=2 in the call: lossy by design' if name == 'ours:step_cache' else '')} |")
        lines.append('')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command')
    child = sub.add_parser('_child')
    child.add_argument('--impl', required=True)
    child.add_argument('--base', required=True)
    child.add_argument('--refiner', required=True)
    child.add_argument('--params', required=True)
    child.add_argument('--images', required=True)
    child.add_argument('--part', default='both')
    child.add_argument('--variant', default='default')
    child.add_argument('--threads', type=int, default=0)
    child.add_argument('--timed', type=int, default=1)
    parser.add_argument('--scales', nargs='+', default=['tiny', 'mid'], choices=list(SCALES))
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads in every child (0: torch default); 1 avoids thread spinning on a busy machine')
    parser.add_argument('--variants', nargs='+', default=['default'],
                        help='ours: default, resident, channels_last, fused_qkv, step_cache (step_cache=2 in each call); '
                             'each measured against the same diffusers runs')
    parser.add_argument('--cache', default=os.path.join(ROOT, '.cache', 'benchmark-models'))
    parser.add_argument('--full-configs', default=FULL_CONFIGS)
    parser.add_argument('--json', default=os.path.join(ROOT, '.cache', 'benchmark-results.json'))
    parser.add_argument('--markdown', help='also write the Markdown tables to this file')
    args = parser.parse_args(argv)
    if args.command == '_child':
        child_main(args)
        return 0

    from benchmarks.models import build_scale

    os.makedirs(args.cache, exist_ok=True)
    work = os.path.join(args.cache, 'images')
    os.makedirs(work, exist_ok=True)
    results = []
    for scale in args.scales:
        print(f'[{scale}] building or reusing the model', file=sys.stderr, flush=True)
        base, refiner = build_scale(scale, args.cache, args.full_configs)
        results.append(bench_scale(scale, base, refiner, args.repeats if scale != 'full' else 1, work,
                                   args.variants, args.threads))
        with open(args.json, 'w') as f:
            json.dump({'machine': machine(), 'results': results}, f, indent=2)
    tables = markdown(results, f'Machine: {machine()}; {args.repeats} interleaved runs per row (median); '
                               f'torch threads per child: {args.threads or "default"}.')
    print(tables)
    if args.markdown:
        with open(args.markdown, 'w', encoding='utf-8') as f:
            f.write(tables + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
