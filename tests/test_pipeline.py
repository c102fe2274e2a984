"""The model card's snippet and the pipeline's construction options."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest

import modelscope_sdxl
from conftest import diffusers_images, max_pixel_difference
from modelscope.models import Model
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl import MODEL_TYPE, PIPELINE_TYPE, SDXLModel, SDXLPipeline


def test_model_card_snippet_writes_a_png(sdxl_pipe, tmp_path):
    output = sdxl_pipe({'text': 'a dog'}, num_inference_steps=4)
    image = output['output_imgs'][0]
    assert isinstance(sdxl_pipe, SDXLPipeline) and isinstance(sdxl_pipe.model, SDXLModel)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.flags['C_CONTIGUOUS']
    path = str(tmp_path / 'result.png')
    assert cv2.imwrite(path, image)
    assert (cv2.imread(path) == image).all()


def test_default_size_comes_from_the_model_config(sdxl_pipe, tiny_sdxl):
    with open(os.path.join(tiny_sdxl[0], 'unet', 'config.json')) as f:
        sample_size = json.load(f)['sample_size']
    out = sdxl_pipe({'text': 'a dog', 'num_inference_steps': 4})
    assert out['output_imgs'][0].shape[:2] == (sample_size * 8, sample_size * 8)


def test_without_seed_the_reported_seed_reproduces_the_image(sdxl_pipe):
    first = sdxl_pipe({'text': 'a dog', 'num_inference_steps': 4})
    second = sdxl_pipe({'text': 'a dog', 'num_inference_steps': 4})
    assert first['seed'] != second['seed']
    again = sdxl_pipe(first['parameters'])
    assert again['seed'] == first['seed']
    assert (again['output_imgs'][0] == first['output_imgs'][0]).all()


def test_parameters_in_input_and_call_are_the_same(sdxl_pipe):
    a = sdxl_pipe({'text': 'a dog', 'seed': 3, 'num_inference_steps': 4, 'guidance_scale': 3.0})
    b = sdxl_pipe({'text': 'a dog'}, seed=3, num_inference_steps=4, guidance_scale=3.0)
    assert (a['output_imgs'][0] == b['output_imgs'][0]).all()


def test_list_input_gives_a_list_of_outputs_and_a_string_is_a_prompt(sdxl_pipe):
    outs = sdxl_pipe([{'text': 'a dog', 'seed': 1}, 'a cat'], num_inference_steps=4, num_images_per_prompt=2)
    assert isinstance(outs, list) and len(outs) == 2
    assert all(len(o['output_imgs']) == 2 for o in outs)
    assert outs[1]['parameters']['text'] == 'a cat'


def test_refiner_and_vae_and_text_encoder_2_are_loaded_once(sdxl_pipe):
    components = sdxl_pipe.model.components
    assert components.refiner.text_encoder_2 is components.base.text_encoder_2
    assert components.refiner.vae is components.base.vae
    assert components.refiner.unet is not components.base.unet


def test_refiner_none_overrides_the_config(tiny_sdxl):
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', refiner=None)
    assert pipe.model.components.refiner is None
    out = pipe({'text': 'a dog', 'seed': 2, 'num_inference_steps': 4})
    assert out['parameters']['refiner_mode'] == 'none'
    with pytest.raises(ValueError, match="refiner_mode='ensemble' needs a refiner"):
        pipe({'text': 'a dog', 'refiner_mode': 'ensemble'})


def test_refiner_folder_given_as_argument(tiny_sdxl, tmp_path):
    base = tmp_path / 'base-only'
    shutil.copytree(tiny_sdxl[0], base)
    cfg = json.loads((base / 'configuration.json').read_text())
    del cfg['model']['refiner']
    (base / 'configuration.json').write_text(json.dumps(cfg))
    assert pipeline(task=Tasks.text_to_image_synthesis, model=str(base), device='cpu').model.components.refiner \
        is None
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=str(base), device='cpu', refiner=tiny_sdxl[1])
    assert pipe.model.components.refiner_dir == tiny_sdxl[1]


def test_plain_diffusers_repo_chosen_by_pipeline_name(tiny_sdxl, tmp_path, diffusers_pair):
    """A repo like AI-ModelScope/stable-diffusion-xl-base-1.0, whose configuration.json names another pipeline."""
    plain = tmp_path / 'sdxl-base-plain'
    shutil.copytree(tiny_sdxl[0], plain)
    (plain / 'configuration.json').write_text(json.dumps(
        {'framework': 'pytorch', 'task': 'text-to-image-synthesis', 'pipeline': {'type': 'diffusers-stable-diffusion'}}))
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=str(plain), pipeline_name=PIPELINE_TYPE,
                    refiner=tiny_sdxl[1], device='cpu')
    assert isinstance(pipe, SDXLPipeline)
    ours = pipe({'text': 'a dog', 'seed': 8, 'num_inference_steps': 10})['output_imgs']
    assert max_pixel_difference(ours, diffusers_images(diffusers_pair, 'ensemble', 'a dog', 8)) <= 2


def test_a_loaded_model_object_can_be_passed(tiny_sdxl):
    model = Model.from_pretrained(tiny_sdxl[0], device='cpu')
    assert isinstance(model, SDXLModel)
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=model)
    assert pipe.model is model
    with pytest.raises(ValueError, match='cannot be changed on an SDXLModel'):
        pipeline(task=Tasks.text_to_image_synthesis, model=model, refiner=None)


def test_max_images_per_call_is_configurable(tiny_sdxl):
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', max_images_per_call=2)
    assert len(pipe({'text': 'a dog', 'num_images_per_prompt': 2, 'num_inference_steps': 4})['output_imgs']) == 2
    with pytest.raises(ValueError, match='num_images_per_prompt must be <= 2'):
        pipe({'text': 'a dog', 'num_images_per_prompt': 3})


@pytest.mark.parametrize('kwargs,error,words', [
    ({'refinr': None}, TypeError, ['refinr', 'known']),
    ({'max_images_per_call': 0}, ValueError, ['max_images_per_call']),
    ({'progress_bar': 'yes'}, TypeError, ['progress_bar']),
    ({'refiner': 42}, TypeError, ['refiner']),
    ({'refiner': None, 'refiner_revision': 'v1'}, ValueError, ['refiner_revision']),
    ({'refiner': '/no/such/folder'}, FileNotFoundError, ['/no/such/folder']),
    ({'device': 'tpu'}, ValueError, ['device', "'tpu'"]),
    ({'device': 'cuda:x'}, ValueError, ['device', "'cuda:x'"]),
])
def test_bad_construction_arguments(tiny_sdxl, kwargs, error, words):
    with pytest.raises(error) as caught:
        pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], **{'device': 'cpu', **kwargs})
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_names_are_registered_once_in_one_place():
    from modelscope.models.builder import MODELS
    from modelscope.pipelines.builder import PIPELINES

    assert MODELS.get(MODEL_TYPE, Tasks.text_to_image_synthesis) is SDXLModel
    assert PIPELINES.get(PIPELINE_TYPE, Tasks.text_to_image_synthesis) is SDXLPipeline
    with open(os.path.join(os.path.dirname(os.path.dirname(modelscope_sdxl.__file__)), 'configuration.json')) as f:
        cfg = json.load(f)
    assert (cfg['model']['type'], cfg['pipeline']['type'], cfg['task']) == (
        MODEL_TYPE, PIPELINE_TYPE, Tasks.text_to_image_synthesis)
    assert set(cfg['model']['refiner']) == {'model_id', 'revision'}
