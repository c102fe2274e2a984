"""The shipped mini model loads like a hub SDXL pair and draws what its prompts ask for."""
import filecmp
import json
import os
import time

import numpy as np
import pytest

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.mini import mini_model_dir, mini_refiner_dir
from modelscope_sdxl.mini.quality import evaluate, eval_scenes, score_images
from modelscope_sdxl.mini.scenes import Scene, read_image, render

BASE_PARTS = ('text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'vae', 'scheduler')


@pytest.fixture(scope='module')
def mini_pipe():
    """The model card's call on the shipped folder; its configuration.json brings the refiner."""
    return pipeline(task=Tasks.text_to_image_synthesis, model=mini_model_dir(), device='cpu')


def test_folders_have_the_hub_layout():
    base, refiner = mini_model_dir(), mini_refiner_dir()
    with open(os.path.join(base, 'configuration.json'), encoding='utf-8') as f:
        config = json.load(f)
    assert config['model']['refiner']['model_id'] == '../refiner'
    with open(os.path.join(base, 'model_index.json'), encoding='utf-8') as f:
        index = json.load(f)
    assert index['_class_name'] == 'StableDiffusionXLPipeline'
    assert index['force_zeros_for_empty_prompt'] is True
    with open(os.path.join(refiner, 'model_index.json'), encoding='utf-8') as f:
        refiner_index = json.load(f)
    assert refiner_index['_class_name'] == 'StableDiffusionXLImg2ImgPipeline'
    assert refiner_index['requires_aesthetics_score'] is True
    for part in BASE_PARTS:
        assert os.path.isdir(os.path.join(base, part)), part
    with open(os.path.join(base, 'unet', 'config.json'), encoding='utf-8') as f:
        assert json.load(f)['addition_embed_type'] == 'text_time'
    with open(os.path.join(base, 'vae', 'config.json'), encoding='utf-8') as f:
        assert len(json.load(f)['block_out_channels']) == 4  # scale factor 8, as SDXL
    # As in the real repos, the refiner folder carries the same text_encoder_2 and VAE as the base.
    for shared in ('text_encoder_2/model.safetensors', 'vae/diffusion_pytorch_model.safetensors'):
        assert filecmp.cmp(os.path.join(base, shared), os.path.join(refiner, shared), shallow=False)
    weights = [os.path.join(root, name) for folder in (base, refiner) for root, _, names in os.walk(folder)
               for name in names if name.endswith('.safetensors')]
    assert len(weights) == 7
    assert sum(os.path.getsize(w) for w in weights) < 20 * 2**20


def test_reader_is_exact_on_drawn_scenes():
    """The pixel reader the quality figure rests on reads perfect drawings perfectly."""
    scenes = eval_scenes(64)
    drawn = (render(scenes, jitter=False) * 255).round().astype(np.uint8)
    scores = score_images(scenes, [img[:, :, ::-1] for img in drawn])
    assert scores == {'colours': 1.0, 'background': 1.0, 'shape_colour': 1.0, 'shape': 1.0, 'position': 1.0}


def test_ensemble_draws_the_prompted_colours(mini_pipe):
    report = evaluate(mini_pipe, modes=('ensemble',))['ensemble']
    print(f'\nmini model, ensemble, {report["images"]} prompts: {report}')
    assert report['colours'] >= 0.9


def test_the_prompt_decides_the_picture(mini_pipe):
    """Swapping the two colour words swaps the colours read from the pixels."""
    for shape_colour, background in (('red', 'blue'), ('blue', 'red')):
        scene = Scene(shape_colour, 'square', background, size='large')
        image = mini_pipe({'text': scene.prompt(), 'seed': 3})['output_imgs'][0]
        seen = read_image(image[:, :, ::-1])
        assert (seen.colour, seen.background) == (shape_colour, background)


def test_refiner_modes_differ_and_one_image_is_fast(mini_pipe):
    prompt = 'a yellow circle at the top left on a black background'
    images, seconds = {}, []
    for mode in ('none', 'ensemble', 'sdedit'):
        images[mode] = mini_pipe({'text': prompt, 'seed': 11, 'refiner_mode': mode})['output_imgs'][0]
    for _ in range(3):
        start = time.perf_counter()
        out = mini_pipe({'text': prompt, 'seed': 11, 'refiner_mode': 'ensemble'})
        seconds.append(time.perf_counter() - start)
    assert out['output_imgs'][0].shape == (64, 64, 3)
    assert np.array_equal(out['output_imgs'][0], images['ensemble'])
    assert np.abs(images['ensemble'].astype(int) - images['none'].astype(int)).max() > 2
    assert np.abs(images['sdedit'].astype(int) - images['none'].astype(int)).max() > 2
    print(f'\none 64 px image, base + refiner (ensemble, 30 steps): {min(seconds):.3f} s (best of 3)')
    assert min(seconds) < 5.0
