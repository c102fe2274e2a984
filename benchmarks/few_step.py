"""What one full-size 1024² image costs on this CPU: 4-step settings against SDXL as shipped (30 + 10 steps).

    python benchmarks/few_step.py                  # builds full-size random weights under .cache/ first
    python benchmarks/few_step.py --size 64 --scale tiny   # the same two runs on the tiny pair (a smoke test)

Two child processes, one after the other, each through this package's ModelScope pipeline in
`memory_mode='lean'` (the mode that fits full-size base + refiner in 24 GB), load included:

1. **4-step settings** (SDXL-Lightning / LCM-LoRA style): 4 steps, `guidance_scale=0`,
   `refiner_mode='none'`, `scheduler='euler_trailing'`: timed end to end.
2. **SDXL as shipped, one guided step per stage** (`num_inference_steps=2, high_noise_frac=0.5`,
   guidance 5): timed end to end, with every UNet call timed by a forward hook.

Running 30 + 10 guided full-size steps would hold this CPU for hours, so the second figure is run 2's
own time with its two UNet calls replaced by 30 base and 10 refiner calls of the durations measured in
it: everything else in it (loading, prompt encoding, the VAE decode) ran. Random weights do the same
arithmetic as trained ones.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RUNS = {
    'four_step': {'num_inference_steps': 4, 'guidance_scale': 0.0, 'refiner_mode': 'none',
                  'scheduler': 'euler_trailing'},
    'shipped_cut': {'num_inference_steps': 2, 'high_noise_frac': 0.5, 'guidance_scale': 5.0,
                    'refiner_mode': 'ensemble'},
}
SHIPPED_STEPS = {'base': 30, 'refiner': 10}
PROMPT = 'a red circle on a blue background, high quality'


def child(base: str, run: str, size: int) -> Dict[str, Any]:
    """One generation in this process; UNet calls and VAE decodes timed by global forward hooks."""
    t0 = time.perf_counter()
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.autoencoders.vae import Decoder

    import modelscope_sdxl  # noqa: F401
    from benchmarks.run import peak_rss_gb
    from modelscope.pipelines import pipeline

    calls: List[Dict[str, Any]] = []
    started: Dict[int, float] = {}

    def pre(module: Any, args: Any) -> None:
        if isinstance(module, (UNet2DConditionModel, Decoder)):
            started[id(module)] = time.perf_counter()

    def post(module: Any, args: Any, output: Any) -> None:
        if isinstance(module, UNet2DConditionModel):
            calls.append({'stage': None, 'batch': int(args[0].shape[0]),
                          's': time.perf_counter() - started.pop(id(module))})
        elif isinstance(module, Decoder):
            calls.append({'stage': 'vae_decode', 's': time.perf_counter() - started.pop(id(module))})

    def on_step(stage: str, step: int, total: int) -> None:
        """Each step makes one UNet call (a guided step is one call on a batch of 2): it is this stage's."""
        pending = [c for c in calls if c['stage'] is None]
        if len(pending) != 1:
            raise RuntimeError(f'expected one UNet call per step, found {len(pending)}')
        pending[0]['stage'] = stage

    torch.nn.modules.module.register_module_forward_pre_hook(pre)
    torch.nn.modules.module.register_module_forward_hook(post)
    pipe = pipeline(task='text-to-image-synthesis', model=base, device='cpu', memory_mode='lean')
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = pipe({'text': PROMPT, 'seed': 0, 'height': size, 'width': size, **RUNS[run]}, callback=on_step)
    wall = time.perf_counter() - t1
    assert out['output_imgs'][0].shape == (size, size, 3)
    return {'run': run, 'load_s': load, 'call_s': wall, 'total_s': time.perf_counter() - t0, 'calls': calls,
            'threads': torch.get_num_threads(), 'peak_rss_gb': peak_rss_gb()}


def summarize(four: Dict[str, Any], cut: Dict[str, Any]) -> Dict[str, Any]:
    unet_s = {stage: [c['s'] for c in cut['calls'] if c['stage'] == stage] for stage in ('base', 'refiner')}
    per_call = {stage: sum(v) / len(v) for stage, v in unet_s.items()}
    rest = cut['total_s'] - sum(sum(v) for v in unet_s.values())
    shipped_unet = sum(SHIPPED_STEPS[s] * per_call[s] for s in SHIPPED_STEPS)
    shipped = rest + shipped_unet
    return {'four_step_min': four['total_s'] / 60, 'shipped_min': shipped / 60, 'ratio': shipped / four['total_s'],
            'shipped_unet_s': shipped_unet,
            'guided_base_call_s': per_call['base'], 'guided_refiner_call_s': per_call['refiner'],
            'four_step_unet_calls_s': [c['s'] for c in four['calls'] if c['stage'] == 'base'],
            'vae_decode_s': [c['s'] for c in four['calls'] if c['stage'] == 'vae_decode'],
            'rest_of_cut_run_s': rest}


def markdown(four: Dict[str, Any], cut: Dict[str, Any], s: Dict[str, Any], size: int) -> str:
    unet4 = sum(s['four_step_unet_calls_s'])
    base_steps, refiner_steps = SHIPPED_STEPS['base'], SHIPPED_STEPS['refiner']
    lines = [
        f'| {size}², fp32, lean, {four["threads"]} threads | UNet calls | UNet seconds | everything else s '
        f'| CPU minutes | peak RSS GB |',
        '|---|---|---|---|---|---|',
        f'| 4-step settings (guidance 0, no refiner, euler_trailing) | 4 x batch 1 | {unet4:.0f} '
        f'| {four["total_s"] - unet4:.0f} | **{s["four_step_min"]:.1f}** (run) | {four["peak_rss_gb"]:.1f} |',
        f'| SDXL as shipped, {base_steps} base + {refiner_steps} refiner steps, guidance 5 '
        f'| {base_steps + refiner_steps} x batch 2 | {s["shipped_unet_s"]:.0f} '
        f'| {s["rest_of_cut_run_s"]:.0f} | **{s["shipped_min"]:.1f}** '
        f'(1 + 1 steps run, {base_steps} + {refiner_steps} composed) '
        f'| {cut["peak_rss_gb"]:.1f} |',
        '',
        f'Shipped / 4-step: **{s["ratio"]:.1f}x**. One guided call: base {s["guided_base_call_s"]:.0f} s, refiner '
        f'{s["guided_refiner_call_s"]:.0f} s; 4-step calls {", ".join(f"{v:.0f}" for v in s["four_step_unet_calls_s"])} '
        f's; VAE decode {", ".join(f"{v:.0f}" for v in s["vae_decode_s"])} s.',
    ]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', choices=('tiny', 'mid', 'full'), default='full')
    parser.add_argument('--size', type=int, default=1024)
    parser.add_argument('--cache', default=os.path.join(ROOT, '.cache', 'benchmark-models'))
    parser.add_argument('--json', default=os.path.join(ROOT, '.cache', 'few-step-results.json'))
    parser.add_argument('--child', choices=list(RUNS))
    parser.add_argument('--base')
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.base, args.child, args.size)))
        return 0

    from benchmarks.models import FULL_CONFIGS, build_scale
    from benchmarks.run import machine

    base, _ = build_scale(args.scale, args.cache, FULL_CONFIGS)
    results = {}
    for run in RUNS:
        proc = subprocess.run([sys.executable, __file__, '--child', run, '--base', base, '--size', str(args.size)],
                              stdout=subprocess.PIPE, check=True, text=True)
        results[run] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f'{run}: {results[run]["total_s"]:.1f} s', flush=True)
    summary = summarize(results['four_step'], results['shipped_cut'])
    print(f'{machine()}; scale {args.scale}\n')
    print(markdown(results['four_step'], results['shipped_cut'], summary, args.size))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, 'w', encoding='utf-8') as f:
        json.dump({'runs': results, 'summary': summary}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
