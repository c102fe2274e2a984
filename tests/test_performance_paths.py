"""The speed and memory measures change no pixel: lean residency and the refiner's reused encodings."""
import gc

import numpy as np
import pytest
import torch

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.parameters import validate
from modelscope_sdxl.stages.prompts import encode, encode_for_refiner

CASES = [
    {'text': 'a red circle', 'seed': 1},
    {'text': 'a dog', 'seed': 2, 'negative_prompt': 'blurry', 'refiner_mode': 'sdedit', 'num_images_per_prompt': 2},
    {'text': 'a cat', 'seed': 3, 'guidance_scale': 1.0, 'scheduler': 'dpmpp_2m'},
    {'text': ('a yellow star on a dark sky, ' * 10).strip(', '), 'seed': 4, 'refiner_mode': 'none'},
]


@pytest.fixture(scope='module')
def lean_pipe(tiny_sdxl):
    return pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', memory_mode='lean')


@pytest.mark.parametrize('params', CASES, ids=range(len(CASES)))
def test_lean_memory_mode_gives_the_resident_images(sdxl_pipe, lean_pipe, params):
    params = {'num_inference_steps': 8, **params}
    assert sdxl_pipe.model.components.memory_mode == 'resident'
    ours = lean_pipe(params)['output_imgs']
    for lean, resident in zip(ours, sdxl_pipe(params)['output_imgs']):
        assert np.array_equal(lean, resident)


def test_lean_mode_keeps_no_unet_or_text_encoder_between_calls(lean_pipe):
    components = lean_pipe.model.components
    lean_pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 4})
    gc.collect()
    assert components.base.unet is None and components.refiner.unet is None
    assert components.base.text_encoder is None and components.base.text_encoder_2 is None
    assert isinstance(components.base.vae, torch.nn.Module)


@pytest.mark.parametrize('params', [
    {'text': 'a red circle'},
    {'text': 'a red circle', 'negative_prompt': 'blurry'},
    {'text': 'a red circle', 'guidance_scale': 1.0},
    {'text': 'a red circle', 'clip_skip': 1},
    {'text': 'a red circle', 'prompt_2': 'a blue square'},
])
def test_refiner_embeddings_reused_from_the_base_equal_its_own_encoding(sdxl_pipe, params):
    components = sdxl_pipe.model.components
    request = validate({'seed': 1, **params}, sdxl_pipe.limits)
    guidance = request.guidance_scale > 1
    base = encode(components.base, request, components.device, guidance)
    reused = encode_for_refiner(components.refiner, request, components.device, guidance, base, {})
    own = encode(components.refiner, request, components.device, guidance)
    assert set(reused) == set(own)
    for name in own:
        assert torch.equal(reused[name], own[name]), name


@pytest.mark.parametrize('kwargs,words', [
    ({'memory_mode': 'tiny'}, ['memory_mode', "'lean'"]),
    ({'memory_mode': 'offload'}, ['offload', 'GPU']),
    ({'memory_mode': 'lean', 'lora': 'owner/style-lora'}, ['lean', 'lora']),
])
def test_bad_memory_modes(tiny_sdxl, kwargs, words):
    with pytest.raises(ValueError) as caught:
        pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', **kwargs)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_vae_tiling_changes_nothing_below_the_tile_and_decodes_larger_images(tiny_sdxl, sdxl_pipe):
    tiled = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', vae_tiling=True)
    vae = tiled.model.components.base.vae
    assert vae.use_tiling and vae.tile_sample_min_size == 64
    params = {'text': 'a dog', 'seed': 5, 'num_inference_steps': 6}
    assert np.array_equal(tiled(params)['output_imgs'][0], sdxl_pipe(params)['output_imgs'][0])
    calls = []
    real = vae.tiled_decode
    vae.tiled_decode = lambda *a, **k: calls.append(1) or real(*a, **k)
    big = tiled({**params, 'height': 128, 'width': 128})['output_imgs'][0]
    assert calls and big.shape == (128, 128, 3)


def test_compile_unet_wraps_the_resident_unets(tiny_sdxl):
    compiled = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', compile_unet=True)
    for pipe in (compiled.model.components.base, compiled.model.components.refiner):
        assert type(pipe.unet).__name__ == 'OptimizedModule'
    with pytest.raises(ValueError, match="compile_unet needs the UNets resident"):
        pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', compile_unet=True,
                 memory_mode='lean')
    with pytest.raises(TypeError, match='compile_unet must be True or False'):
        pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', compile_unet='yes')


def test_lean_mode_releases_each_stage_network_when_its_stage_ends(lean_pipe, monkeypatch):
    """Peak memory is one stage's networks only if nothing keeps the previous stage's alive."""
    import weakref

    residency = lean_pipe.model.components.residency
    loaded = []
    real_load = type(residency)._load

    def recording_load(self, cls, folder, component):
        network = real_load(self, cls, folder, component)
        loaded.append((component, weakref.ref(network)))
        return network

    def alive():
        gc.collect()
        return [name for name, ref in loaded if ref() is not None]

    seen_in_stage = []
    monkeypatch.setattr(type(residency), '_load', recording_load)
    lean_pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 4},
              callback=lambda stage, step, total: seen_in_stage.append((stage, alive())))
    assert [c for c, _ in loaded] == ['text_encoder', 'text_encoder_2', 'unet', 'unet']
    assert all(names == ['unet'] for _, names in seen_in_stage), seen_in_stage
    assert alive() == []
