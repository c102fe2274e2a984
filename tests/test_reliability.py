"""Reliability: concurrent calls never mix, no NaN image is returned, loading is safe, broken folders
and mid-run faults give clear errors and leave the pipeline working."""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.generation import NonFiniteOutputError, decode_latents
from modelscope_sdxl.loading.folder_checks import ModelFolderError

from conftest import assert_concurrent_equals_sequential

CALLS = [
    {'text': 'a red circle', 'seed': 1, 'scheduler': 'euler'},
    {'text': 'a blue square', 'seed': 2, 'scheduler': 'euler_ancestral'},
    {'text': 'a green star', 'seed': 3, 'scheduler': 'dpmpp_2m_karras', 'refiner_mode': 'sdedit'},
    {'text': 'a dog in the snow', 'seed': 4, 'scheduler': 'ddim', 'negative_prompt': 'blurry'},
    {'text': 'a cat', 'seed': 5, 'scheduler': 'heun', 'num_images_per_prompt': 2},
    {'text': 'a boat on a river', 'seed': 6, 'scheduler': 'unipc', 'refiner_mode': 'none'},
    {'text': 'a (red:1.4) house', 'seed': 7, 'prompt_weighting': True, 'scheduler': 'dpmpp_2m'},
    {'text': ('a yellow sun over a dark sea, ' * 10).strip(', '), 'seed': 8, 'scheduler': 'dpmpp_2m_sde_karras'},
    {'text': 'a tree', 'seed': 9, 'guidance_scale': 1.0},
    {'text': 'a moon', 'seed': 10, 'height': 48, 'width': 80},
]


def run(pipe, params):
    return pipe({'num_inference_steps': 8, **params})['output_imgs']


def test_concurrent_calls_equal_their_sequential_results(sdxl_pipe):
    assert_concurrent_equals_sequential(lambda c: run(sdxl_pipe, c), CALLS)


def test_nan_pixels_raise_instead_of_a_black_image(sdxl_pipe, monkeypatch):
    vae = sdxl_pipe.model.components.base.vae
    real_decode = vae.decode
    monkeypatch.setattr(vae, 'decode', lambda latents, return_dict=False: (real_decode(
        latents, return_dict=False)[0] * float('nan'),))
    with pytest.raises(NonFiniteOutputError, match='decoded pixels contain NaN'):
        run(sdxl_pipe, {'text': 'a dog', 'seed': 1})
    monkeypatch.undo()
    assert np.isfinite(run(sdxl_pipe, {'text': 'a dog', 'seed': 1})[0]).all()


def test_nan_latents_raise(sdxl_pipe, monkeypatch):
    unet = sdxl_pipe.model.components.refiner.unet
    real_forward = unet.forward

    def broken(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        return (out[0] * float('inf'),)

    monkeypatch.setattr(unet, 'forward', broken)
    with pytest.raises(NonFiniteOutputError, match='latents contain NaN or inf'):
        run(sdxl_pipe, {'text': 'a dog', 'seed': 1})
    monkeypatch.undo()
    before = run(sdxl_pipe, {'text': 'a dog', 'seed': 1})
    assert np.array_equal(before[0], run(sdxl_pipe, {'text': 'a dog', 'seed': 1})[0])


def test_a_half_precision_vae_that_overflows_is_retried_in_fp32(sdxl_pipe):
    from modelscope_sdxl.generation import _decode

    vae32 = copy.deepcopy(sdxl_pipe.model.components.base.vae)
    with torch.no_grad():
        vae32.decoder.conv_in.weight.mul_(1e5)
        vae32.decoder.conv_in.bias.mul_(1e5)
    vae16 = copy.deepcopy(vae32).half()
    vae32 = copy.deepcopy(vae16).float()  # the same (half-rounded) weights in fp32
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(_decode(vae16, latents)).all(), 'the fault must really overflow fp16'
    retried = decode_latents(vae16, latents)
    assert torch.allclose(retried, decode_latents(vae32, latents), atol=1e-4)
    assert next(vae16.parameters()).dtype == torch.float16, 'the shared VAE must not change'


# --- loading: safetensors only unless opted in, and broken folders named ---------------------------------------


def copy_pair(tiny_sdxl, tmp_path):
    root = tmp_path / 'pair'
    shutil.copytree(os.path.dirname(tiny_sdxl[0]), root)
    return root / 'base', root / 'refiner'


def build(base, **kwargs):
    return pipeline(task=Tasks.text_to_image_synthesis, model=str(base), device='cpu', **kwargs)


def test_pickle_weights_are_refused_unless_opted_in(tiny_sdxl, tmp_path, sdxl_pipe):
    from safetensors.torch import load_file

    base, _ = copy_pair(tiny_sdxl, tmp_path)
    weights = base / 'unet' / 'diffusion_pytorch_model.safetensors'
    torch.save(load_file(str(weights)), str(base / 'unet' / 'diffusion_pytorch_model.bin'))
    weights.unlink()
    with pytest.raises(ModelFolderError, match=r'unet: .*diffusion_pytorch_model\.bin is a pickle file.*allow_pickle'):
        build(base)
    opted_in = build(base, allow_pickle=True)
    params = {'text': 'a dog', 'seed': 3}
    assert np.array_equal(run(opted_in, params)[0], run(sdxl_pipe, params)[0])


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def truncate(path):
    size = path.stat().st_size
    with open(path, 'r+b') as f:
        f.truncate(size // 2)


def resave_unet(folder, **changes):
    """A UNet whose config and weights agree, but whose config differs from the one that fits the pair."""
    from diffusers import UNet2DConditionModel

    config = dict(UNet2DConditionModel.load_config(str(folder / 'unet')), **changes)
    UNet2DConditionModel.from_config(config).save_pretrained(str(folder / 'unet'))


BROKEN = {
    'missing component': (lambda b, r: shutil.rmtree(b / 'text_encoder_2'), r'has no text_encoder_2/ folder'),
    'missing weights': (lambda b, r: (b / 'vae' / 'diffusion_pytorch_model.safetensors').unlink(),
                        r'vae: .*diffusion_pytorch_model\.safetensors is missing'),
    'truncated weights': (lambda b, r: truncate(b / 'unet' / 'diffusion_pytorch_model.safetensors'),
                          r'unet/diffusion_pytorch_model\.safetensors is truncated or corrupt'),
    'corrupt config': (lambda b, r: (b / 'unet' / 'config.json').write_text('{"sample_size": '),
                       r'unet: .*config\.json is not valid JSON'),
    'config does not match weights': (
        lambda b, r: edit_json(b / 'unet' / 'config.json', lambda c: c.update(block_out_channels=[32, 96])),
        r'unet: .*does not match .*config\.json: shape of'),
    'text encoder config does not match weights': (
        lambda b, r: edit_json(b / 'text_encoder' / 'config.json', lambda c: c.update(num_hidden_layers=3)),
        r'text_encoder: .*weight\(s\) the config has no place for'),
    'SD 1.5 layout': (lambda b, r: edit_json(b / 'model_index.json', lambda c: c.update(
        _class_name='StableDiffusionPipeline')), r'is not an SDXL base: .*StableDiffusionPipeline.*1\.x/2\.x'),
    'no model_index.json': (lambda b, r: (b / 'model_index.json').unlink(), r'model_index\.json is missing'),
    'refiner text encoder does not match': (
        lambda b, r: edit_json(r / 'text_encoder_2' / 'config.json', lambda c: c.update(hidden_size=48)),
        r"refiner's text_encoder_2 does not match the base's \(hidden_size: 48 vs 32\)"),
    'refiner unet cannot read the base text encoder': (
        lambda b, r: resave_unet(r, cross_attention_dim=64), r'refiner unet/config\.json: cross_attention_dim is 64'),
    'base unet expects other time ids': (
        lambda b, r: resave_unet(b, projection_class_embeddings_input_dim=72),
        r'base unet/config\.json: projection_class_embeddings_input_dim is 72, but 6 time ids'),
    'refiner is a base': (lambda b, r: edit_json(r / 'model_index.json', lambda c: c.update(
        _class_name='StableDiffusionXLPipeline')), r'is not an SDXL refiner'),
}


@pytest.mark.parametrize('case', sorted(BROKEN))
def test_broken_folders_get_an_error_naming_the_file(tiny_sdxl, tmp_path, case):
    base, refiner = copy_pair(tiny_sdxl, tmp_path)
    breakage, pattern = BROKEN[case]
    breakage(base, refiner)
    with pytest.raises(ModelFolderError, match=pattern):
        build(base)


# --- faults mid-run leave the pipeline working ---------------------------------------------------------------


def test_an_exception_in_the_callback_propagates_and_the_next_call_is_clean(sdxl_pipe):
    params = {'text': 'a dog', 'seed': 12}
    before = run(sdxl_pipe, params)

    def explode(stage, step, total):
        if stage == 'refiner':
            raise KeyError('callback failed')

    with pytest.raises(KeyError, match='callback failed'):
        run(sdxl_pipe, {**params, 'callback': explode})
    assert np.array_equal(run(sdxl_pipe, params)[0], before[0])


def test_out_of_memory_is_reported_with_the_stage_and_the_next_call_is_clean(sdxl_pipe, monkeypatch):
    params = {'text': 'a dog', 'seed': 13}
    before = run(sdxl_pipe, params)
    unet = sdxl_pipe.model.components.base.unet

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError('CUDA out of memory (simulated)')

    monkeypatch.setattr(unet, 'forward', oom)
    with pytest.raises(torch.OutOfMemoryError) as caught:
        run(sdxl_pipe, params)
    assert any('during the base stage' in note for note in caught.value.__notes__)
    monkeypatch.undo()
    assert np.array_equal(run(sdxl_pipe, params)[0], before[0])
