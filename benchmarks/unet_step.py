"""Time UNet calls of a full-size (or mid-size) SDXL UNet with random weights, without building a model folder.

    python benchmarks/unet_step.py --scale full --stage base --size 1024 --batch 1 --calls 1

For estimates too costly to run end to end on a small CPU (a full-size 1024² image): one call's
seconds, its FLOPs, and its share of this machine's fp32 GEMM rate measured in the same process.
Weights are random (initialised the way diffusers does), which does not change the arithmetic.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FULL_CONFIGS = os.path.join(ROOT, 'benchmarks', 'sdxl-full-size-configs.json')  # SDXL 1.0's component configs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scale', choices=('mid', 'full'), default='full')
    parser.add_argument('--stage', choices=('base', 'refiner'), default='base')
    parser.add_argument('--size', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=1, help='1: guidance off; 2: guidance on')
    parser.add_argument('--calls', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--step-cache', type=int, default=1,
                        help='N > 1: calls go through modelscope_sdxl.stages.step_cache (full every N-th call); full and '
                             'cached calls are timed and FLOP-counted apart')
    parser.add_argument('--configs', default=FULL_CONFIGS)
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks.models import full_configs, mid_configs
    from benchmarks.run import gemm_flops_per_s, unet_step_flops

    torch.set_num_threads(args.threads)
    configs = full_configs(args.configs)
    if args.scale == 'mid':
        configs = mid_configs(configs)
    config = configs[f'unet_{args.stage}']
    time_ids = 6 if args.stage == 'base' else 5
    flops = unet_step_flops(config, args.size, args.size, time_ids, batch=args.batch)
    cached_flops = unet_step_flops(config, args.size, args.size, time_ids, batch=args.batch, step_cache=2,
                                   cached_call=True) if args.step_cache > 1 else None
    gemm_before = gemm_flops_per_s(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        unet = UNet2DConditionModel(**config).eval()
    build = time.perf_counter() - t0
    b, h = args.batch, args.size // 8
    text_embeds = config['projection_class_embeddings_input_dim'] - time_ids * config['addition_time_embed_dim']
    inputs = dict(sample=torch.randn(b, 4, h, h), timestep=torch.tensor(500.0),
                  encoder_hidden_states=torch.randn(b, 77, config['cross_attention_dim']),
                  added_cond_kwargs={'text_embeds': torch.randn(b, text_embeds), 'time_ids': torch.randn(b, time_ids)})
    if args.step_cache > 1:
        from modelscope_sdxl.stages.step_cache import with_step_cache

        unet = with_step_cache(unet, args.step_cache)
    seconds, cached = [], []
    with torch.no_grad():
        for _ in range(args.calls):
            t1 = time.perf_counter()
            unet(**inputs)
            elapsed = time.perf_counter() - t1
            reused = args.step_cache > 1 and unet.step_cache_state.reuse
            (cached if reused else seconds).append(elapsed)
    gemm = max(gemm_before, gemm_flops_per_s(args.threads))
    step = min(seconds)
    report = {'scale': args.scale, 'stage': args.stage, 'size': args.size, 'batch': args.batch,
              'threads': args.threads, 'build_s': build, 'call_s': seconds, 'flops': flops,
              'gemm_flops_per_s': gemm, 'gemm_share': flops / step / gemm}
    if cached:
        full_s, cached_s = statistics.median(seconds), statistics.median(cached)
        n = args.step_cache
        report.update(cached_call_s=cached, cached_flops=cached_flops, cached_over_full_time=cached_s / full_s,
                      cached_over_full_flops=cached_flops / flops,
                      speedup_per_step=n * full_s / (full_s + (n - 1) * cached_s))
    print(json.dumps(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
