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
from modelscope_sdxl.mini.quality import THRESHOLDS, evaluate, eval_scenes, score_images
from modelscope_sdxl.mini.scenes import Scene, random_scenes, read_image, render
from modelscope_sdxl.parameters import REFINER_MODES as MODES

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


def drawn(scenes, size=64, jitter=False, seed=0):
    images = render(scenes, size=size, jitter=jitter, rng=np.random.default_rng(seed))
    return [img[:, :, ::-1] for img in (images * 255).round().astype(np.uint8)]  # BGR, as the pipeline's


@pytest.mark.parametrize('size', [64, 128])
def test_reader_is_exact_on_drawn_scenes(size):
    """The pixel reader the quality figures rest on reads perfect drawings perfectly, at the old
    and the new native size."""
    scenes = eval_scenes()
    assert len(scenes) == 90 and len({(s.shape, s.size, s.position) for s in scenes}) == 90
    assert len({(s.colour, s.background) for s in scenes}) == 56  # every colour pair
    scores = score_images(scenes, drawn(scenes, size))
    assert {k: v for k, v in scores.items() if not k.startswith('fill_')} == {
        'colours': 1.0, 'background': 1.0, 'shape_colour': 1.0, 'shape': 1.0, 'shape_fill': 1.0,
        'position': 1.0, 'size': 1.0, 'clean': 1.0}
    assert scores['fill_square'] == 1.0
    assert scores['fill_circle'] == pytest.approx(np.pi / 4, abs=0.01)
    assert scores['fill_triangle'] == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize('count', [0, 91, 2.5, True])
def test_eval_scenes_refuses_a_count_outside_the_set(count):
    with pytest.raises(ValueError, match=r'count: the number of evaluation prompts, an integer from 1 to 90'):
        eval_scenes(count)


def test_reader_reads_jittered_training_drawings():
    """The training data's jitter (+-12% size, +-4% place, +-12 levels) stays inside every class."""
    scenes = random_scenes(np.random.default_rng(1), 200)
    scores = score_images(scenes, drawn(scenes, 128, jitter=True, seed=2))
    assert min(v for k, v in scores.items() if not k.startswith('fill_')) == 1.0


def test_reader_sees_the_defects_it_counts():
    """Rounded squares, blobby triangles, wrong sizes and stray patches each cost their column."""
    square = Scene('red', 'square', 'blue', size='large')
    circle = Scene('red', 'circle', 'blue', size='large')
    triangle = Scene('red', 'triangle', 'blue', size='large')
    sq, ci = (d.astype(int) for d in drawn([square, circle], 128))
    scores = score_images([triangle], [ci.astype(np.uint8)])  # a blob where a triangle was asked for
    assert scores['shape'] == scores['shape_fill'] == 0.0
    scores = score_images([square], [ci.astype(np.uint8)])  # a square drawn round
    assert scores['shape'] == scores['shape_fill'] == 0.0 and scores['fill_square'] < 0.85
    # A small circle where a large one was asked for: colours and place right, size wrong.
    small = drawn([Scene('red', 'circle', 'blue', size='small')], 128)[0]
    assert score_images([circle], [small])['size'] == 0.0
    assert score_images([circle], [small])['colours'] == 1.0
    # A 5 x 5 patch of a third colour (green) away from the shape, and one inside it (patches count
    # from 16 pixels at 128 x 128).
    for y, x in ((5, 5), (62, 62)):
        patched = sq.copy()
        patched[y:y + 5, x:x + 5] = (60, 170, 40)  # BGR green
        seen = read_image(patched.astype(np.uint8)[:, :, ::-1])
        assert seen.stray_pixels == 25, (y, x)
        assert score_images([square], [patched.astype(np.uint8)])['clean'] == 0.0
    # A second red patch (a stray copy of the shape's colour) counts too; a 3 x 3 speck does not.
    patched = sq.copy()
    patched[5:10, 5:10] = (30, 30, 220)
    assert read_image(patched.astype(np.uint8)[:, :, ::-1]).stray_pixels == 25
    patched = sq.copy()
    patched[5:8, 5:8] = (60, 170, 40)
    assert score_images([square], [patched.astype(np.uint8)])['clean'] == 1.0


@pytest.mark.parametrize('mode', MODES)
def test_every_mode_draws_what_the_prompts_ask_for(mini_pipe, mode):
    """The quality check over the whole grammar (90 prompts), held to THRESHOLDS in every mode."""
    report = evaluate(mini_pipe, modes=(mode,))[mode]
    print(f'\nmini model, {mode}, {report["images"]} prompts: {report}')
    assert report['images'] == 90
    below = {k: (report[k], v) for k, v in THRESHOLDS.items() if report[k] < v}
    assert below == {}


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
