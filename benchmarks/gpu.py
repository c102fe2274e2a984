"""The GPU benchmark: full-size SDXL base + refiner at 1024², ours against plain diffusers, one table.

    bash benchmarks/gpu.sh                  # on a CUDA machine: builds full-size random weights there
    bash benchmarks/gpu.sh --tiny --device cpu   # the same script at tiny size (what the tests run)

Rows, each in a fresh child process (so load time and peak memory are its own):

- ``diffusers``: StableDiffusionXLPipeline + StableDiffusionXLImg2ImgPipeline in fp16 sharing
  text_encoder_2 and the VAE (which diffusers upcasts to fp32 to decode), as its docs teach;
- ``ours``: this package, ``memory_mode='resident'`` (fp16 networks, fp32 VAE);
- ``ours_offload``: ``memory_mode='offload'`` (each stage's networks move to the GPU for that
  stage; on a CPU run its stand-in is ``memory_mode='lean'``);
- ``ours_compile``: ``compile_unet=True`` (compiled during an untimed warm-up call), last, as
  it takes longest; a row still running when ``--budget-s`` (450 s) is spent is stopped;
- ``diffusers_compile`` (only if named in ``--rows``): torch.compile on diffusers' UNets.

Every row makes the same image (1024², 20 steps, ensemble at 0.5: 10 base + 10 refiner
steps, guidance 5) after an untimed 2-step warm-up call; seconds per step are medians
of the step-to-step times (CUDA synchronised), peak memory is torch's peak VRAM
(peak RSS on a CPU run). The table goes to stdout at the end, and to stderr after each row, so a run cut
short still shows what it measured; the JSON goes to WORK/gpu-results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FULL_CONFIGS = os.path.join(ROOT, 'benchmarks', 'sdxl-full-size-configs.json')  # SDXL 1.0's component configs

ROWS = ('diffusers', 'ours', 'ours_offload', 'ours_compile', 'diffusers_compile')
DEFAULT_ROWS = ROWS[:4]
PROMPT = 'a red circle on a blue background, high quality'
NEGATIVE = 'blurry'
SEED = 1234
HIGH_NOISE_FRAC = 0.5


# --- children -----------------------------------------------------------------------------------------------------


class _Clock:
    """Step-end timestamps per stage, taken after the device has finished the step's work."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
        self.stamps: Dict[str, List[float]] = {'base': [], 'refiner': []}

    def stamp(self, stage: str) -> None:
        self.sync()
        self.stamps[stage].append(time.perf_counter())

    def per_step(self, stage: str) -> Optional[float]:
        s = self.stamps[stage]
        diffs = [b - a for a, b in zip(s, s[1:])]
        return statistics.median(diffs) if diffs else None


def _peak_memory_gb(device: str) -> float:
    import resource

    import torch

    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 1024 ** 3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def child_ours(args: argparse.Namespace, clock: _Clock) -> Dict[str, Any]:
    import modelscope_sdxl  # noqa: F401
    from modelscope.pipelines import pipeline

    memory_mode = 'resident'
    if args.row == 'ours_offload':
        memory_mode = 'offload' if args.device.startswith('cuda') else 'lean'
    t0 = time.perf_counter()
    pipe = pipeline(task='text-to-image-synthesis', model=args.base, device=args.device, memory_mode=memory_mode,
                    compile_unet=args.row == 'ours_compile')
    load = time.perf_counter() - t0
    call = {'text': PROMPT, 'negative_prompt': NEGATIVE, 'seed': SEED, 'height': args.size, 'width': args.size,
            'high_noise_frac': HIGH_NOISE_FRAC}
    from modelscope_sdxl.generation import NonFiniteOutputError

    def generate(steps: int, **kwargs: Any) -> Any:
        try:
            return pipe({**call, 'num_inference_steps': steps}, **kwargs)
        except NonFiniteOutputError as exc:  # random weights in fp16 may overflow; the step times still count
            notes.append(str(exc).split(';')[0])
            return None

    notes: List[str] = []
    t1 = time.perf_counter()
    generate(2)  # warm-up (and compilation)
    warm = time.perf_counter() - t1
    clock.stamps = {'base': [], 'refiner': []}
    clock.sync()
    t2 = time.perf_counter()
    out = generate(args.steps, callback=lambda stage, step, total: clock.stamp(stage))
    clock.sync()
    import numpy as np
    rgb = None if out is None else np.stack([img[:, :, ::-1] for img in out['output_imgs']])
    return {'load_s': load, 'warmup_s': warm, 'wall_s': time.perf_counter() - t2, 'images': rgb,
            'memory_mode': pipe.model.components.memory_mode, 'note': '; '.join(dict.fromkeys(notes))}


def child_diffusers(args: argparse.Namespace, clock: _Clock) -> Dict[str, Any]:
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    dtype = torch.float16 if args.device.startswith('cuda') else torch.float32
    t0 = time.perf_counter()
    base = StableDiffusionXLPipeline.from_pretrained(args.base, torch_dtype=dtype, use_safetensors=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        args.refiner, text_encoder_2=base.text_encoder_2, vae=base.vae, torch_dtype=dtype, use_safetensors=True)
    for p in (base, refiner):
        p.to(args.device)
        p.set_progress_bar_config(disable=True)
        if args.row == 'diffusers_compile':
            p.unet = torch.compile(p.unet)
    load = time.perf_counter() - t0

    def recorder(stage: str) -> Any:
        def on_step(pipe: Any, i: int, t: Any, tensors: Dict[str, Any]) -> Dict[str, Any]:
            clock.stamp(stage)
            return tensors
        return on_step

    def generate(steps: int) -> Any:
        generator = torch.Generator('cpu').manual_seed(SEED)
        common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, generator=generator)
        latents = base(**common, height=args.size, width=args.size, denoising_end=HIGH_NOISE_FRAC,
                       output_type='latent', callback_on_step_end=recorder('base')).images
        return refiner(**common, image=latents, denoising_start=HIGH_NOISE_FRAC, output_type='np',
                       callback_on_step_end=recorder('refiner')).images

    t1 = time.perf_counter()
    generate(2)
    warm = time.perf_counter() - t1
    clock.stamps = {'base': [], 'refiner': []}
    clock.sync()
    t2 = time.perf_counter()
    images = generate(args.steps)
    clock.sync()
    finite = bool(np.isfinite(images).all())
    return {'load_s': load, 'warmup_s': warm, 'wall_s': time.perf_counter() - t2,
            'images': (images * 255).round().astype(np.uint8) if finite else None,
            'note': '' if finite else 'NaN or inf in the image (random weights in fp16)'}


def child_main(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    if args.compile_backend != 'inductor':
        import functools

        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)  # compile_unet's call too
    if args.device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = False  # both sides alike; fp16 does not use it anyway
    else:
        torch.set_num_threads(1)
    clock = _Clock(args.device)
    result = (child_diffusers if args.row.startswith('diffusers') else child_ours)(args, clock)
    images = result.pop('images')
    if images is not None:
        np.save(args.images, images)
    result.update(base_step_s=clock.per_step('base'), refiner_step_s=clock.per_step('refiner'),
                  peak_memory_gb=_peak_memory_gb(args.device))
    print('RESULT ' + json.dumps(result), flush=True)


# --- parent -------------------------------------------------------------------------------------------------------


def build_models(args: argparse.Namespace) -> tuple:
    """Tiny (built offline here) or full-size random-weight folders; full size is built on the GPU in fp16."""
    if args.tiny:
        from modelscope_sdxl.mini.sdxl_folders import build_tiny_sdxl

        return build_tiny_sdxl(os.path.join(args.work, 'tiny'))
    import torch

    from benchmarks.models import build_pair, full_configs

    cuda = args.device.startswith('cuda')
    folders = build_pair(os.path.join(args.work, 'full'), full_configs(args.configs),
                         device=args.device if cuda else 'cpu', dtype=torch.float16 if cuda else None)
    if cuda:
        torch.cuda.empty_cache()  # the rows run in child processes: leave them the whole GPU
    return folders


def run_row(args: argparse.Namespace, row: str, base: str, refiner: str, timeout: float) -> Dict[str, Any]:
    images = os.path.join(args.work, f'images-{row}.npy')
    cmd = [sys.executable, os.path.abspath(__file__), '_child', '--row', row, '--base', base, '--refiner', refiner,
           '--device', args.device, '--size', str(args.size), '--steps', str(args.steps), '--images', images,
           '--compile-backend', args.compile_backend]
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    t0 = time.perf_counter()
    if os.path.exists(images):
        os.remove(images)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'stopped after {timeout:.0f} s: the time budget (--budget-s) ran out',
                'child_s': time.perf_counter() - t0}
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {'error': f'exit {proc.returncode}: {tail[-1] if tail else ""}'[:300], 'child_s': time.perf_counter() - t0}
    result = json.loads(lines[-1][len('RESULT '):])
    result['child_s'] = time.perf_counter() - t0
    result['images'] = images
    return result


def max_diff(a: Optional[str], b: Optional[str]) -> Optional[int]:
    import numpy as np

    if not a or not b or not (os.path.exists(a) and os.path.exists(b)):
        return None
    return int(np.abs(np.load(a).astype(int) - np.load(b).astype(int)).max())


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return '—' if value is None else f'{value:.{digits}g}'


def table(results: Dict[str, Dict[str, Any]], args: argparse.Namespace, device_name: str) -> str:
    memory = 'peak VRAM GB' if args.device.startswith('cuda') else 'peak RSS GB'
    ref = results.get('diffusers', {})
    lines = [f'{device_name}: {args.size}x{args.size}, {args.steps} steps, ensemble {HIGH_NOISE_FRAC} '
             f'({"fp16, fp32 VAE" if args.device.startswith("cuda") else "fp32"}), guidance 5', '',
             f'| run | base s / step | refiner s / step | base / diffusers | refiner / diffusers | wall s | load s '
             f'| warm-up s | {memory} | max pixel diff | note |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for row, r in results.items():
        ratios = []
        for stage in ('base', 'refiner'):
            a, b = r.get(f'{stage}_step_s'), ref.get(f'{stage}_step_s')
            ratios.append(f'{a / b:.3f}' if a and b and row != 'diffusers' else '')
        diff = max_diff(r.get('images'), ref.get('images')) if row != 'diffusers' else None
        note = r.get('error') or '; '.join(x for x in (f"memory_mode {r['memory_mode']}" if r.get('memory_mode')
                                                        else '', r.get('note')) if x)
        lines.append(f"| {row} | {_fmt(r.get('base_step_s'))} | {_fmt(r.get('refiner_step_s'))} | {ratios[0]} | "
                     f"{ratios[1]} | {_fmt(r.get('wall_s'))} | {_fmt(r.get('load_s'))} | {_fmt(r.get('warmup_s'))} | "
                     f"{_fmt(r.get('peak_memory_gb'))} | {'' if diff is None else diff} | {note} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command')
    child = sub.add_parser('_child')
    for name in ('--row', '--base', '--refiner', '--device', '--images'):
        child.add_argument(name, required=True)
    child.add_argument('--size', type=int, required=True)
    child.add_argument('--steps', type=int, required=True)
    child.add_argument('--compile-backend', default='inductor')
    parser.add_argument('--tiny', action='store_true', help='the tiny random-weight pair instead of full size')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--size', type=int, default=None, help='image side (default: 1024, tiny: 64)')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--rows', nargs='+', default=list(DEFAULT_ROWS), choices=ROWS)
    parser.add_argument('--compile-backend', default='inductor',
                        help="torch.compile backend of the compile rows; 'eager' (graph capture only, no code "
                             "generation) tries the script quickly on a CPU")
    parser.add_argument('--budget-s', type=float, default=450,
                        help='stop any row still running after this many seconds from the start (building '
                             'included), so the table always comes out; the compile row runs last')
    parser.add_argument('--work', default=os.path.join(ROOT, '.cache', 'gpu-benchmark'))
    parser.add_argument('--configs', default=FULL_CONFIGS,
                        help='full-size component configs (JSON: unet_base, unet_refiner, vae, text_encoder(_2))')
    args = parser.parse_args(argv)
    if args.command == '_child':
        child_main(args)
        return 0
    import torch

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error('no CUDA device here: pass --device cpu (with --tiny) to try the script on a CPU')
    args.size = args.size or (64 if args.tiny else 1024)
    os.makedirs(args.work, exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith('cuda') else f'CPU ({os.cpu_count()} cores)'
    t0 = time.perf_counter()
    base, refiner = build_models(args)
    print(f'[gpu benchmark] models ready in {time.perf_counter() - t0:.0f} s: {base}', file=sys.stderr, flush=True)
    results: Dict[str, Dict[str, Any]] = {}
    for row in args.rows:
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 20:
            results[row] = {'error': 'not run: the time budget (--budget-s) ran out'}
            continue
        print(f'[gpu benchmark] {row} ({left:.0f} s of the budget left) ...', file=sys.stderr, flush=True)
        results[row] = run_row(args, row, base, refiner, timeout=left)
        print(table(results, args, device_name) + '\n', file=sys.stderr, flush=True)
        with open(os.path.join(args.work, 'gpu-results.json'), 'w', encoding='utf-8') as f:
            json.dump({'device': device_name, 'size': args.size, 'steps': args.steps, 'results': results}, f,
                      indent=2)
    print(f'[gpu benchmark] total {time.perf_counter() - t0:.0f} s', file=sys.stderr, flush=True)
    print(table(results, args, device_name))
    return 0 if all(not r.get('error') for r in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
