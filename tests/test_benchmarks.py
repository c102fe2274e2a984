"""The benchmarks run as shipped: the GPU script end to end at tiny size on the CPU, and the
CPU benchmark's FLOP count and GEMM rate that give each UNet step's share of the machine."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.run import gemm_flops_per_s, unet_step_flops  # noqa: E402


def test_gpu_script_runs_every_row_at_tiny_size_on_the_cpu(tmp_path):
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    result = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu.sh'), '--tiny', '--device', 'cpu',
                             '--steps', '6', '--work', str(work), '--compile-backend', 'eager'],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / 'gpu-results.json').read_text())
    assert list(report['results']) == ['diffusers', 'ours', 'ours_offload', 'ours_compile']
    for row in report['results'].values():
        assert 'error' not in row
        assert row['base_step_s'] > 0 and row['refiner_step_s'] > 0 and row['peak_memory_gb'] > 0
    assert report['results']['ours_offload']['memory_mode'] == 'lean'  # the CPU's stand-in for offload
    table = [line for line in result.stdout.splitlines() if line.startswith('| ')]
    assert [line.split('|')[1].strip() for line in table] == ['run', 'diffusers', 'ours', 'ours_offload',
                                                                 'ours_compile']
    for line in table[2:]:  # ours rows: the same image as diffusers within 2/255
        assert int(line.split('|')[10]) <= 2


def test_unet_step_flops_counted_on_meta_equal_a_real_forward(tmp_path):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from torch.utils.flop_counter import FlopCounterMode

    from modelscope_sdxl.mini.sdxl_folders import build_tiny_sdxl

    base, _ = build_tiny_sdxl(str(tmp_path / 'tiny'))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(base, 'unet'))
    # torch's counter does not see the CPU's fused attention kernel: count attention as explicit matmuls.
    unet.set_attn_processor(AttnProcessor())
    config = dict(unet.config)
    text_embeds = config['projection_class_embeddings_input_dim'] - 6 * config['addition_time_embed_dim']
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.randn(2, 77, config['cross_attention_dim']),
             added_cond_kwargs={'text_embeds': torch.randn(2, text_embeds), 'time_ids': torch.randn(2, 6)})
    assert unet_step_flops(config, 64, 64, time_ids=6) == counter.get_total_flops() > 0
    assert unet_step_flops(config, 64, 64, time_ids=6, batch=1) * 2 == counter.get_total_flops()


def test_gemm_rate_is_a_plausible_rate():
    rate = gemm_flops_per_s(threads=1, size=256, repeats=2)
    assert 1e8 < rate < 1e13


def test_gpu_benchmark_builds_half_precision_folders_that_pass_the_folder_checks(tmp_path):
    """The full-size build on a GPU saves fp16 weights; shown here with the tiny configs on the CPU."""
    from safetensors import safe_open

    from benchmarks.models import build_pair
    from modelscope_sdxl.loading.folder_checks import check_folder
    from modelscope_sdxl.mini.sdxl_folders import tiny_configs

    base, refiner = build_pair(str(tmp_path / 'pair'), tiny_configs(), dtype=torch.float16)
    check_folder(base, 'base')
    check_folder(refiner, 'refiner')
    for folder in (base, refiner):
        with safe_open(os.path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors'), 'pt') as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {'F16'}


def test_few_step_script_times_each_unet_call_and_composes_the_shipped_run(tmp_path):
    out = tmp_path / 'few-step.json'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'few_step.py'), '--scale', 'tiny',
                             '--size', '64', '--cache', str(tmp_path / 'models'), '--json', str(out)],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    four, cut = report['runs']['four_step'], report['runs']['shipped_cut']
    # 4 steps without guidance: four base calls on a batch of 1, then one decode
    assert [(c['stage'], c.get('batch')) for c in four['calls']] == [('base', 1)] * 4 + [('vae_decode', None)]
    # one guided step per stage: a batch of 2 each, base first
    assert [(c['stage'], c.get('batch')) for c in cut['calls']] == [('base', 2), ('refiner', 2), ('vae_decode', None)]
    s = report['summary']
    base_s, refiner_s = cut['calls'][0]['s'], cut['calls'][1]['s']
    composed = cut['total_s'] - base_s - refiner_s + 30 * base_s + 10 * refiner_s
    assert abs(s['shipped_min'] * 60 - composed) < 1e-6
    assert abs(s['four_step_min'] * 60 - four['total_s']) < 1e-6
    assert '| 4-step settings' in result.stdout and '| SDXL as shipped' in result.stdout
