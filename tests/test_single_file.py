"""Single-file SDXL checkpoints, loaded offline through diffusers' from_single_file.

The checkpoints are written from a tiny SDXL pair in the original (SGM / AUTOMATIC1111) key layout by
tests/original_layout.py. Its two text encoders have different widths, as SDXL's do (768 and 1280):
diffusers tells the ViT-L encoder's weights from the OpenCLIP one's in a single file by that width,
so a pair with equal widths cannot be told apart (the shared tiny model's are both 32).
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.loading import single_file
from modelscope_sdxl.mini.sdxl_folders import TINY_TEXT_ENCODER, TINY_UNET_COMMON, TINY_VAE, build_sdxl_pair, pair_configs
from modelscope_sdxl.names import PIPELINE_TYPE

from hub_fixtures import hub_environment
from hub_stub import HubStub, StubRepo
from original_layout import write_original_checkpoint

TASK = Tasks.text_to_image_synthesis
CALL = {'text': 'a red circle on a blue background', 'seed': 2, 'num_inference_steps': 5}
TEXT_ENCODER_2 = dict(TINY_TEXT_ENCODER, hidden_size=48, projection_dim=48, intermediate_size=50)


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    """Folders, single files and weight-less config folders of the tiny pair."""
    root = tmp_path_factory.mktemp('single-file')
    base, refiner = build_sdxl_pair(str(root / 'folders'),
                                    configs=pair_configs(TINY_TEXT_ENCODER, TEXT_ENCODER_2, TINY_VAE, TINY_UNET_COMMON))
    files = {'base': write_original_checkpoint(base, str(root / 'tiny_sdxl_base.safetensors')),
             'refiner': write_original_checkpoint(base, str(root / 'tiny_sdxl_refiner.safetensors'), refiner)}
    configs = {}
    for role, folder in (('base', base), ('refiner', refiner)):
        configs[role] = str(root / 'configs' / role)
        shutil.copytree(folder, configs[role], ignore=shutil.ignore_patterns('*.safetensors'))
    return {'folders': {'base': base, 'refiner': refiner}, 'files': files, 'configs': configs, 'root': root}


@pytest.fixture(scope='module')
def folder_images(pair):
    folders = pair['folders']
    pipe = pipeline(task=TASK, model=folders['base'], refiner=folders['refiner'], device='cpu')
    return {mode: pipe({**CALL, 'refiner_mode': mode})['output_imgs'] for mode in ('ensemble', 'none')}


def max_difference(a, b):
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def single_file_pipe(pair, **kwargs):
    return pipeline(task=TASK, model=pair['files']['base'], pipeline_name=PIPELINE_TYPE, device='cpu',
                    single_file_config=dict(pair['configs']), **kwargs)


def test_the_file_is_in_the_original_layout(pair):
    from safetensors import safe_open

    with safe_open(pair['files']['base'], 'pt') as f:
        keys = set(f.keys())
    prefixes = {k.split('.')[0] for k in keys}
    assert prefixes == {'model', 'first_stage_model', 'conditioner'}
    assert 'model.diffusion_model.input_blocks.0.0.weight' in keys
    assert 'conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight' in keys
    assert 'conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight' in keys
    assert not any(os.path.isfile(os.path.join(d, c, f)) for d in pair['configs'].values()
                   for c in ('unet', 'vae', 'text_encoder_2') for f in os.listdir(os.path.join(d, c))
                   if f.endswith('.safetensors'))


def test_base_and_refiner_single_files_draw_what_the_folders_draw_without_the_hub(pair, folder_images, tmp_path):
    with HubStub({}) as stub, hub_environment(stub, str(tmp_path / 'cache')):
        pipe = single_file_pipe(pair, refiner=pair['files']['refiner'])
        images = pipe(dict(CALL))['output_imgs']
        assert stub.requests == [], 'a single-file load must not ask any hub'
    components = pipe.model.components
    assert (components.base_dir, components.refiner_dir) == (pair['files']['base'], pair['files']['refiner'])
    assert max_difference(images, folder_images['ensemble']) <= 2


def test_base_single_file_alone(pair, folder_images):
    pipe = single_file_pipe(pair)
    assert pipe.model.components.refiner is None
    assert max_difference(pipe(dict(CALL, refiner_mode='none'))['output_imgs'], folder_images['none']) <= 2


def test_single_file_refiner_after_a_folder_base(pair, folder_images):
    pipe = pipeline(task=TASK, model=pair['folders']['base'], refiner=pair['files']['refiner'], device='cpu',
                    single_file_config={'refiner': pair['configs']['refiner']})
    assert max_difference(pipe(dict(CALL))['output_imgs'], folder_images['ensemble']) <= 2


def test_the_tokenizers_come_from_the_sdxl_hub_repo_when_the_config_folder_has_none(pair, folder_images, tmp_path):
    configs = str(tmp_path / 'no-tokenizers')
    shutil.copytree(pair['configs']['base'], configs, ignore=shutil.ignore_patterns('tokenizer*'))
    repo = {single_file.TOKENIZER_REPO: StubRepo({'master': pair['folders']['base']})}
    with HubStub(repo) as stub, hub_environment(stub, str(tmp_path / 'cache')):
        pipe = pipeline(task=TASK, model=pair['files']['base'], pipeline_name=PIPELINE_TYPE, device='cpu',
                        single_file_config=configs)
        fetched = {path for _, _, path in stub.downloads()}
    assert fetched and all(path.startswith(('tokenizer/', 'tokenizer_2/')) for path in fetched)
    assert max_difference(pipe(dict(CALL, refiner_mode='none'))['output_imgs'], folder_images['none']) <= 2


def test_shipped_configs_are_sdxl_1_0():
    """The package's configs build networks of SDXL 1.0's exact sizes (parameter counts of the real repos)."""
    import accelerate
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    expected = {('base', 'unet'): 2_567_463_684, ('refiner', 'unet'): 2_259_526_660, ('base', 'vae'): 83_653_863,
                ('refiner', 'vae'): 83_653_863, ('base', 'text_encoder'): 123_060_480,
                ('base', 'text_encoder_2'): 694_659_840, ('refiner', 'text_encoder_2'): 694_659_840}
    for (role, component), count in expected.items():
        folder = os.path.join(single_file.CONFIG_ROOT, role, component)
        with accelerate.init_empty_weights():
            if component.startswith('text_encoder'):
                cls = CLIPTextModel if component == 'text_encoder' else CLIPTextModelWithProjection
                network = cls(CLIPTextConfig.from_pretrained(folder))
            else:
                cls = UNet2DConditionModel if component == 'unet' else AutoencoderKL
                network = cls.from_config(cls.load_config(folder))
        assert sum(p.numel() for p in network.parameters()) == count, (role, component)
    for role, name in (('base', 'StableDiffusionXLPipeline'), ('refiner', 'StableDiffusionXLImg2ImgPipeline')):
        with open(os.path.join(single_file.CONFIG_ROOT, role, 'model_index.json'), encoding='utf-8') as f:
            assert json.load(f)['_class_name'] == name


def test_a_missing_single_file_is_named(tmp_path):
    path = str(tmp_path / 'nowhere.safetensors')
    with pytest.raises(FileNotFoundError, match=f"single-file checkpoint '{path}' does not exist"):
        pipeline(task=TASK, model=path, pipeline_name=PIPELINE_TYPE, device='cpu')


@pytest.mark.parametrize('config,error,words', [
    (['a'], TypeError, ['single_file_config must be a config folder']),
    ({'vae': '/x'}, TypeError, ['single_file_config', "'refiner'"]),
    ('/no/such/folder', FileNotFoundError, ["single_file_config['base']", 'model_index.json']),
])
def test_bad_single_file_config(pair, config, error, words):
    with pytest.raises(error) as info:
        pipeline(task=TASK, model=pair['files']['base'], pipeline_name=PIPELINE_TYPE, device='cpu',
                 single_file_config=config)
    assert all(word in str(info.value) for word in words)


def test_lean_memory_mode_is_refused_for_a_single_file(pair):
    with pytest.raises(ValueError, match="single-file checkpoint loads whole: use memory_mode='resident'"):
        single_file_pipe(pair, memory_mode='lean')


def test_cli_model_may_be_a_single_file(pair, tmp_path, monkeypatch):
    from modelscope_sdxl.cli import build_parser
    from modelscope_sdxl.cli.errors import CommandError
    from modelscope_sdxl.cli.sources import ModelSource, model_record

    monkeypatch.chdir(os.path.dirname(pair['files']['base']))
    name = os.path.basename(pair['files']['base'])
    source = ModelSource.from_args(build_parser().parse_args(['generate', 'a dog', '--model', name]))
    assert source.base_folder() == pair['files']['base']
    assert model_record(name) == pair['files']['base']
    with pytest.raises(CommandError, match="--revision applies to a hub model; .* is a local file"):
        ModelSource(model=name, revision='v1').check()
    with pytest.raises(FileNotFoundError, match="--model: single-file checkpoint 'missing.safetensors'"):
        ModelSource(model='missing.safetensors').base_folder()


def test_cli_generate_with_single_files(pair, folder_images, tmp_path, monkeypatch, capsys):
    """`--model x.safetensors --refiner y.safetensors`: the package's config folders (here pointed at the
    tiny pair's, as the real ones are SDXL 1.0's) load them, and the PNG is the folder model's image."""
    import cv2

    from modelscope_sdxl.cli import main

    monkeypatch.setattr(single_file, 'CONFIG_ROOT', str(pair['root'] / 'configs'))
    out = str(tmp_path / 'single.png')
    code = main(['generate', CALL['text'], '--model', pair['files']['base'], '--refiner', pair['files']['refiner'],
                 '--device', 'cpu', '--seed', '2', '--steps', '5', '--out', out, '--quiet'])
    assert code == 0
    assert max_difference([cv2.imread(out)], folder_images['ensemble']) <= 2
