"""Cold start: a fresh process's first image, ours against plain diffusers, on the tiny model.

    python benchmarks/cold_start.py --repeats 3

Each run is a new Python process timing its phases: importing torch and diffusers' SDXL
pipelines (both pay this), importing ModelScope and this package (ours only; reported apart),
building the pipeline (ours: ModelScope's builder, our folder checks, loading; diffusers:
from_pretrained of base and refiner sharing text_encoder_2 and the VAE), and the first call
(20 steps, ensemble). Runs alternate ours and diffusers; medians are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def child(impl: str, base: str, refiner: str) -> Dict[str, float]:
    phases: Dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = now - t
        t = now

    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    torch.set_num_threads(1)
    lap('import torch + diffusers')
    if impl == 'ours':
        import modelscope_sdxl  # noqa: F401
        from modelscope.pipelines import pipeline
        lap('import ModelScope + ours')
        pipe = pipeline(task='text-to-image-synthesis', model=base, device='cpu')
        lap('build')
        pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 20})
        lap('first call')
    else:
        b = StableDiffusionXLPipeline.from_pretrained(base, use_safetensors=True)
        r = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner, text_encoder_2=b.text_encoder_2, vae=b.vae,
                                                             use_safetensors=True)
        for p in (b, r):
            p.set_progress_bar_config(disable=True)
        lap('build')
        generator = torch.Generator('cpu').manual_seed(1)
        latents = b(prompt='a dog', num_inference_steps=20, denoising_end=0.8, output_type='latent',
                    generator=generator).images
        r(prompt='a dog', num_inference_steps=20, denoising_start=0.8, image=latents, generator=generator,
          output_type='np')
        lap('first call')
    return phases


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--work', default=os.path.join(ROOT, '.cache', 'cold-start'))
    parser.add_argument('--child', choices=('ours', 'diffusers'))
    parser.add_argument('--base')
    parser.add_argument('--refiner')
    args = parser.parse_args(argv)
    if args.child:
        print('RESULT ' + json.dumps(child(args.child, args.base, args.refiner)), flush=True)
        return 0
    from modelscope_sdxl.mini.sdxl_folders import build_tiny_sdxl

    base, refiner = build_tiny_sdxl(os.path.join(args.work, 'tiny'))
    runs: Dict[str, List[Dict[str, float]]] = {'diffusers': [], 'ours': []}
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    for _ in range(args.repeats):
        for impl in runs:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', impl, '--base', base,
                                  '--refiner', refiner], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
            phases = json.loads([line for line in out.stdout.splitlines() if line.startswith('RESULT ')][-1][7:])
            phases['process'] = time.perf_counter() - t0  # interpreter start and exit included
            runs[impl].append(phases)
    rows = []
    for impl, rs in runs.items():
        keys = list(rs[0])
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        rows.append((impl, med))
    print(f'{args.repeats} interleaved runs each (median s), 1 torch thread, tiny model\n')
    print('| run | ' + ' | '.join(rows[1][1]) + ' | in-process total | total without ModelScope import |')
    print('|---' * (len(rows[1][1]) + 3) + '|')
    totals = {}
    for impl, med in rows:
        phases = [k for k in med if k != 'process']
        total = sum(med[k] for k in phases)
        totals[impl] = (total, total - med.get('import ModelScope + ours', 0.0))
        cells = [f"{med[k]:.2f}" if k in med else '—' for k in rows[1][1]]
        print(f'| {impl} | ' + ' | '.join(cells) + f' | {total:.2f} | {totals[impl][1]:.2f} |')
    print(f"\nours / diffusers: {totals['ours'][0] / totals['diffusers'][0]:.2f} with the ModelScope import, "
          f"{totals['ours'][1] / totals['diffusers'][0]:.2f} without it")
    return 0


if __name__ == '__main__':
    sys.exit(main())
