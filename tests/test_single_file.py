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
from modelscope_sdxl.loading.single_file import ROLES
from modelscope_sdxl.mini.sdxl_folders import TINY_TEXT_ENCODER, TINY_UNET_COMMON, TINY_VAE, build_sdxl_pair, pair_configs
from modelscope_sdxl.names import PIPELINE_TYPE

from conftest import max_pixel_difference
from hub_fixtures import hub_environment
from hub_stub import HubStub
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


@pytest.fixture(scope='module')
def clip_vocab_pair(tmp_path_factory):
    """A tiny base whose text encoders read CLIP's 49,408 token ids (<|startoftext|> 49406, <|endoftext|>
    49407, as SDXL's do), its single file, and its config folder without tokenizers."""
    root = tmp_path_factory.mktemp('clip-vocab')
    sizes = dict(vocab_size=49408)
    base, _ = build_sdxl_pair(str(root / 'folders'), configs=pair_configs(
        dict(TINY_TEXT_ENCODER, **sizes), dict(TEXT_ENCODER_2, **sizes), TINY_VAE, TINY_UNET_COMMON))
    for name in ('text_encoder', 'text_encoder_2'):
        path = os.path.join(base, name, 'config.json')
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(dict(config, bos_token_id=49406, eos_token_id=49407), f)
    configs = str(root / 'configs')
    shutil.copytree(base, configs, ignore=shutil.ignore_patterns('*.safetensors', 'tokenizer*'))
    return {'folder': base, 'file': write_original_checkpoint(base, str(root / 'clip_vocab_base.safetensors')),
            'configs': configs}


def test_a_config_folder_without_tokenizers_loads_the_shipped_clip_tokenizers_offline(clip_vocab_pair, tmp_path):
    """The shipped configs have no tokenizer folders: a load with them (here: a tiny config folder
    likewise without) takes the package's CLIP tokenizers, asks no host at all, and draws what plain
    diffusers draws with transformers' CLIPTokenizer on those files."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    assert not any(os.path.isdir(os.path.join(single_file.CONFIG_ROOT, role, name))
                   for role in ROLES for name in ('tokenizer', 'tokenizer_2'))
    call = dict(CALL, text='A (red) circle, on a blue background!', refiner_mode='none')
    with HubStub({}) as stub, hub_environment(stub, str(tmp_path / 'cache')) as env:
        pipe = pipeline(task=TASK, model=clip_vocab_pair['file'], pipeline_name=PIPELINE_TYPE, device='cpu',
                        single_file_config=clip_vocab_pair['configs'])
        images = pipe(call)['output_imgs']
        assert stub.requests == [] and env.foreign_hosts == [], 'a single-file load must not ask any host'
    components = pipe.model.components
    assert [(len(t), t.pad_token_id, t.model_max_length) for t in (components.base.tokenizer, components.base.tokenizer_2)] \
        == [(49408, 49407, 77), (49408, 0, 77)]
    reference = StableDiffusionXLPipeline.from_pretrained(
        clip_vocab_pair['folder'], tokenizer=CLIPTokenizer.from_pretrained(single_file.CLIP_TOKENIZER),
        tokenizer_2=CLIPTokenizer.from_pretrained(single_file.CLIP_TOKENIZER, pad_token='!'))
    expected = reference(prompt=call['text'], num_inference_steps=call['num_inference_steps'], output_type='np',
                         generator=[torch.Generator('cpu').manual_seed(call['seed'])]).images
    assert max_pixel_difference(images, [(image * 255).round().astype(np.uint8) for image in expected]) <= 2


# Ids of OpenAI CLIP's SimpleTokenizer (open_clip_torch 3.3.0's tokenizer.py with its bpe_simple_vocab_16e6.txt.gz)
# for these texts, cross-checked against transformers' CLIPTokenizer on the shipped files by
# tests/build_clip_tokenizer.py --verify (400 texts; equal ids, decode and round trip).
CLIP_IDS = [
    ('a photo of a cat', [49406, 320, 1125, 539, 320, 2368, 49407]),
    ('A red circle on a blue background', [49406, 320, 736, 7117, 525, 320, 1746, 5994, 49407]),
    ("hello, world! it's we're I'll they'd", [49406, 3306, 267, 1002, 256, 585, 568, 649, 982, 328, 1342, 889,
                                              1896, 49407]),
    ('(masterpiece:1.2), best quality, [ugly], ((sharp focus))', [49406, 263, 12066, 281, 272, 269, 273, 2361, 949,
                                                                  3027, 267, 314, 8159, 34067, 13796, 8157, 4353,
                                                                  5167, 49407]),
    ('Pneumonoultramicroscopicsilicovolcanoconiosis', [49406, 28714, 749, 20253, 9800, 535, 532, 1065, 901, 1556,
                                                       13697, 9916, 78, 39031, 13903, 49407]),
    ('Crème brûlée à la française, naïve café', [49406, 1075, 12138, 614, 711, 127, 119, 75, 13489, 21259, 1210,
                                                 38381, 30505, 267, 1097, 35689, 563, 15304, 49407]),
    ('straße Σίσυφος Москва', [49406, 1894, 127, 253, 324, 139, 225, 138, 107, 139, 225, 139, 227, 139, 228, 138,
                               123, 139, 480, 38018, 13506, 23669, 27152, 39813, 27080, 49407]),
    ('東京の夜景、ネオン', [49406, 48338, 21078, 105, 21575, 23170, 250, 48132, 363, 45262, 2429, 235, 3909, 103,
                      26875, 49407]),
    ('一只小狗', [49406, 19759, 222, 34517, 103, 34720, 237, 163, 233, 501, 49407]),
    ('مدينة', [49406, 12986, 19872, 12046, 16655, 20915, 49407]),
    ('a 🐱 and a 🐶 under 🌈', [49406, 320, 22979, 537, 320, 10631, 1798, 13042, 49407]),
    ('∑ ∫ √ ≈ π', [49406, 17788, 495, 17788, 360, 17788, 504, 45451, 139, 478, 49407]),
    ('price $1,234.56 at 12:30pm', [49406, 2827, 259, 272, 267, 273, 274, 275, 269, 276, 277, 536, 272, 273, 281,
                                    274, 271, 990, 49407]),
    ('user@example.com https://a.b/c?d=e#f', [49406, 7031, 287, 6228, 269, 2464, 30901, 12441, 320, 269, 321, 270,
                                              322, 286, 323, 284, 324, 258, 325, 49407]),
    ('snake_case and camelCase and kebab-case', [49406, 8798, 318, 2068, 537, 27005, 2068, 537, 36497, 268, 2068,
                                                 49407]),
    ('8k uhd, dslr, film grain, Fujifilm XT3', [49406, 279, 330, 84, 4414, 267, 33740, 267, 1860, 12109, 267,
                                                24765, 1052, 274, 49407]),
    ('  Tabs\tand\nnewlines  ', [49406, 29163, 537, 1218, 3418, 49407]),
    ('quotes "double" \'single\' `back`', [49406, 5808, 257, 3200, 257, 568, 17005, 262, 319, 893, 319, 49407]),
    ('a/b\\c|d<e>f{g}h[i]j~k^l%m', [49406, 320, 270, 321, 315, 322, 347, 323, 283, 324, 285, 325, 346, 326, 348,
                                    327, 314, 328, 316, 329, 349, 330, 317, 331, 260, 332, 49407]),
]


def test_the_shipped_vocabulary_is_clips_built_from_its_merges():
    """vocab.json is what CLIP's SimpleTokenizer builds from merges.txt (byte characters, the same with
    </w>, the merges joined, the two special tokens), and merges.txt is the first 48,894 merges of
    bpe_simple_vocab_16e6.txt.gz (sha256 924691ac...6804a) under its '#version: 0.2' line."""
    import hashlib

    from build_clip_tokenizer import MERGES, vocabulary

    with open(os.path.join(single_file.CLIP_TOKENIZER, 'merges.txt'), 'rb') as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == '9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a'
    lines = raw.decode('utf-8').split('\n')
    assert lines[0] == '#version: 0.2' and lines[-1] == '' and len(lines) == MERGES + 2
    with open(os.path.join(single_file.CLIP_TOKENIZER, 'vocab.json'), encoding='utf-8') as f:
        vocab = json.load(f)
    assert vocab == {token: i for i, token in enumerate(vocabulary(lines[1:-1]))}
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert (vocab['!'], vocab['!</w>'], vocab['in'], vocab['<|startoftext|>'], vocab['<|endoftext|>']) == (
        0, 256, 512, 49406, 49407)


@pytest.mark.parametrize('text,ids', CLIP_IDS, ids=range(len(CLIP_IDS)))
def test_the_shipped_tokenizers_give_clips_ids(text, ids):
    from transformers import CLIPTokenizerFast

    tokenizers = [single_file.shipped_tokenizer('tokenizer'), CLIPTokenizerFast.from_pretrained(single_file.CLIP_TOKENIZER)]
    if '!' not in text:  # tokenizer_2 reads '!', its pad token, as id 0 (below)
        tokenizers.append(single_file.shipped_tokenizer('tokenizer_2'))
    for tokenizer in tokenizers:
        assert tokenizer(text).input_ids == ids
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert tokenizer(decoded).input_ids == ids  # round trip


def test_the_shipped_tokenizers_pad_as_sdxls_do():
    """SDXL's tokenizer pads with <|endoftext|> (49407), tokenizer_2 with '!' (0); 77 ids, long text cut."""
    for name, pad in (('tokenizer', 49407), ('tokenizer_2', 0)):
        tokenizer = single_file.shipped_tokenizer(name)
        assert (len(tokenizer), tokenizer.model_max_length, tokenizer.pad_token_id) == (49408, 77, pad)
        assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
        short = tokenizer('a photo of a cat', padding='max_length', max_length=77, truncation=True).input_ids
        assert short == CLIP_IDS[0][1] + [pad] * 70
        long = tokenizer('word ' * 100, padding='max_length', max_length=77, truncation=True).input_ids
        assert long == [49406] + [2653] * 75 + [49407]
    # As the SDXL hub repo's tokenizer_2 does under transformers (diffusers issue #4153, whose output this is):
    # '!' in the text is the pad token there; CLIP's own tokenizer reads '! !! !!!' as [256, 748, 995].
    assert single_file.shipped_tokenizer('tokenizer_2')('! !! !!!').input_ids == [49406] + [0] * 6 + [49407]
    assert single_file.shipped_tokenizer('tokenizer')('! !! !!!').input_ids == [49406, 256, 748, 995, 49407]


def test_a_missing_shipped_tokenizer_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(single_file, 'CLIP_TOKENIZER', str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"CLIP tokenizer files \['vocab.json', 'merges.txt'\] are missing"):
        single_file.shipped_tokenizer('tokenizer')
    with pytest.raises(ValueError, match=r"tokenizer name must be one of \['tokenizer', 'tokenizer_2'\], got 'x'"):
        single_file.shipped_tokenizer('x')


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
