"""Hostile inputs (issue 14): every case gets a clear, early error naming what is wrong, and never
stops other work. docs/reliability.md has the table of cases and what each gets."""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

from modelscope.models import Model
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl import cli
from modelscope_sdxl.cli.batch import MANIFEST, run_batch
from modelscope_sdxl.cli.png import JSON_KEY
from modelscope_sdxl.loading.folder_checks import ModelFolderError
from modelscope_sdxl.generation import NonFiniteOutputError
from modelscope_sdxl.inputs.limits import DEFAULT_MAX_PROMPT_CHARS

from test_reliability import copy_pair, edit_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUGE_PROMPT = 'a red circle ' * 23077  # 300,001 characters
FAST = 5.0  # seconds: a guard against minutes of work, not a benchmark (the machine is shared)


def build(base, **kwargs):
    return pipeline(task=Tasks.text_to_image_synthesis, model=str(base), **{'device': 'cpu', **kwargs})


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def manifest(out):
    with open(os.path.join(out, MANIFEST), encoding='utf-8') as f:
        text = f.read()
    return [json.loads(line) for line in text.splitlines()]  # every line valid JSON


# --- 1: a bad batch line never stops the batch -----------------------------------------------------------------

BAD_LINES = [
    '{"id": "first", "text": "a red circle", "seed": 1, "num_inference_steps": 2}',
    '{"id": "inf", "text": "a dog", "guidance_scale": 1e999}',
    '{"text": "a dog \\ud800"}',
    '{"id": "lone\\udc00", "text": "a dog"}',
    '{"id": "neg", "text": "a dog", "negative_prompt": "x\\udfff"}',
    '{"text": "a dog", "seed": -1e999}',
    '{"id": "nested", "text": "a dog", "lora": [[[["\\ud83d"]]]]}',
    '[' * 100000,
    '{"id": "last", "text": "a blue square", "seed": 2, "num_inference_steps": 2}',
]


def test_lines_with_inf_or_lone_surrogates_are_invalid_and_the_others_are_made(sdxl_pipe, tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text('\n'.join(BAD_LINES) + '\n', encoding='utf-8')
    out = str(tmp_path / 'out')
    result = run_batch(str(prompts), out, pipe=sdxl_pipe, log=lambda _: None)
    records = manifest(out)
    assert [r['line'] for r in records] == list(range(1, len(BAD_LINES) + 1))
    assert [r['status'] for r in records] == ['ok'] + ['invalid'] * 7 + ['ok']
    by_line = {r['line']: r for r in records}
    assert by_line[2]['id'] == 'inf'
    assert "'guidance_scale' is a number too large to hold (it reads as inf)" in by_line[2]['error']
    assert "'text' holds a lone surrogate ('\\ud800')" in by_line[3]['error']
    assert "'id' holds a lone surrogate" in by_line[4]['error']
    assert by_line[5]['id'] == 'neg' and "'negative_prompt' holds a lone surrogate" in by_line[5]['error']
    assert "'seed' is a number too large to hold (it reads as -inf)" in by_line[6]['error']
    assert "'lora'[0][0][0][0] holds a lone surrogate" in by_line[7]['error']
    assert by_line[8]['error'].startswith('invalid JSON')
    assert (result.ok, result.invalid, result.failed) == (2, 7, 0)
    # A rerun keeps every record: nothing is made again, nothing fails.
    again = run_batch(str(prompts), out, pipe=sdxl_pipe, log=lambda _: None)
    assert (again.skipped, again.recorded) == (len(BAD_LINES), 0)


def test_lines_with_inf_or_lone_surrogates_do_not_stop_a_ray_batch(tiny_sdxl, tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text('\n'.join(BAD_LINES[1:]) + '\n', encoding='utf-8')
    out = str(tmp_path / 'out')
    result = run_batch(str(prompts), out, model=tiny_sdxl[0], device='cpu', ray_address='local', workers=1,
                       ray_init_kwargs={'num_cpus': 1, 'object_store_memory': 100 * 1024 ** 2,
                                        'log_to_driver': False}, log=lambda _: None)
    assert (result.ok, result.invalid, result.failed) == (1, 7, 0)
    assert [r['status'] for r in manifest(out)] == ['invalid'] * 7 + ['ok']


# --- 2: only the caller opts in to pickle weights ------------------------------------------------------------


def _pickle_repo(tiny_sdxl, tmp_path):
    from safetensors.torch import load_file

    base, _ = copy_pair(tiny_sdxl, tmp_path)
    weights = base / 'unet' / 'diffusion_pytorch_model.safetensors'
    torch.save(load_file(str(weights)), str(base / 'unet' / 'diffusion_pytorch_model.bin'))
    weights.unlink()
    edit_json(base / 'configuration.json', lambda c: c['model'].update(allow_pickle=True))
    return base


def test_a_repo_cannot_allow_pickle_weights_only_the_caller_can(tiny_sdxl, tmp_path, sdxl_pipe, capsys):
    base = _pickle_repo(tiny_sdxl, tmp_path)
    refusal = r"unet/diffusion_pytorch_model\.bin is a pickle file.*allow_pickle=True.*--allow-pickle"
    with pytest.raises(ModelFolderError, match=refusal):
        build(base)
    with pytest.raises(ModelFolderError, match=refusal):
        Model.from_pretrained(str(base), device='cpu')
    code, _, err = run_cli(['generate', 'a dog', '--model', base, '--device', 'cpu', '--out', tmp_path / 'a.png',
                            '--quiet'], capsys)
    assert code == 2 and 'is a pickle file' in err and '--allow-pickle' in err
    # The caller's opt-in works: the same pixels as the .safetensors model.
    params = {'text': 'a dog', 'seed': 3, 'num_inference_steps': 4}
    opted_in = build(base, allow_pickle=True)
    assert np.array_equal(opted_in(params)['output_imgs'][0], sdxl_pipe(params)['output_imgs'][0])
    code, out, _ = run_cli(['generate', 'a dog', '--seed', 3, '--steps', 4, '--model', base, '--device', 'cpu',
                            '--allow-pickle', '--out', tmp_path / 'b.png', '--quiet'], capsys)
    assert code == 0 and out.strip().endswith('b.png')


# --- 3: caps on the work of one call -------------------------------------------------------------------------


def test_a_huge_prompt_is_refused_at_once_on_every_path(sdxl_pipe, tmp_path, capsys):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    plain = f'has 300001 characters, more than max_prompt_chars ({DEFAULT_MAX_PROMPT_CHARS})'
    message = re.escape(plain)
    for field in ('text', 'negative_prompt', 'prompt_2', 'negative_prompt_2'):
        inputs = {'text': 'a dog', field: HUGE_PROMPT}
        start = time.perf_counter()
        with pytest.raises(ValueError, match=f'{field} {message}'):
            sdxl_pipe(inputs)
        assert time.perf_counter() - start < FAST
    start = time.perf_counter()
    code, _, err = run_cli(['generate', HUGE_PROMPT, '--out', tmp_path / 'a.png'], capsys)
    assert code == 2 and f'text {plain}' in err and time.perf_counter() - start < FAST

    png = tmp_path / 'huge.png'
    info = PngInfo()
    info.add_text(JSON_KEY, json.dumps({'text': HUGE_PROMPT, 'seed': 1}))
    Image.new('RGB', (8, 8)).save(png, pnginfo=info)
    start = time.perf_counter()
    code, _, err = run_cli(['generate', '--from-png', png, '--out', tmp_path / 'b.png'], capsys)
    assert code == 2 and f'text {plain}' in err and time.perf_counter() - start < FAST

    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text(json.dumps({'id': 'huge', 'text': HUGE_PROMPT}) + '\n', encoding='utf-8')
    start = time.perf_counter()
    run_batch(str(prompts), str(tmp_path / 'out'), pipe=sdxl_pipe, log=lambda _: None)
    [record] = manifest(str(tmp_path / 'out'))
    assert record['status'] == 'invalid' and f'text {plain}' in record['error']
    assert time.perf_counter() - start < FAST


def test_the_caps_are_pipeline_arguments(tiny_sdxl):
    pipe = build(tiny_sdxl[0], max_prompt_chars=40, max_prompt_tokens=8, max_pixel_steps_per_call=64 * 64 * 10)
    with pytest.raises(ValueError, match=r'text has 41 characters, more than max_prompt_chars \(40\)'):
        pipe({'text': 'a' * 41})
    with pytest.raises(ValueError, match=r'negative_prompt has 9 tokens, more than max_prompt_tokens \(8\)'):
        pipe({'text': 'a dog', 'negative_prompt': 'red green blue red green blue red'})
    with pytest.raises(ValueError, match=r'1 x 64 x 64 x 11 = 45056 pixel-steps, more than '
                                         r'max_pixel_steps_per_call \(40960\)'):
        pipe({'text': 'a dog', 'num_inference_steps': 11})
    assert len(pipe({'text': 'a dog', 'num_inference_steps': 10, 'seed': 1})['output_imgs']) == 1
    for bad in (0, -1, 1.5, True, '10'):
        with pytest.raises(ValueError, match=f'max_prompt_tokens must be an integer >= 1, got {bad!r}'):
            build(tiny_sdxl[0], max_prompt_tokens=bad)


def test_the_default_work_cap_refuses_the_largest_request_the_ranges_allow(sdxl_pipe):
    with pytest.raises(ValueError, match=r'8 x 4096 x 4096 x 1000 = 134217728000 pixel-steps, more than '
                                         r'max_pixel_steps_per_call'):
        sdxl_pipe({'text': 'a dog', 'num_images_per_prompt': 8, 'height': 4096, 'width': 4096,
                   'num_inference_steps': 1000})


# --- 4, 5: tokenizers and configs checked at load --------------------------------------------------------------


def _keep_merges(path, count):
    lines = path.read_text(encoding='utf-8').splitlines()
    path.write_text('\n'.join(lines[:count + 1]) + '\n', encoding='utf-8')


def _keep_all_merges(folder, count):
    """Both files a CLIP tokenizer may be read from keep only their first `count` merges."""
    _keep_merges(folder / 'merges.txt', count)
    edit_json(folder / 'tokenizer.json', lambda t: t['model'].update(merges=t['model']['merges'][:count]))


BROKEN = {
    'empty merges.txt': (lambda b: _keep_merges(b / 'tokenizer' / 'merges.txt', 0),
                         r'tokenizer: .*tokenizer/merges\.txt holds no merges'),
    'tokenizer.json without merges': (lambda b: _keep_all_merges(b / 'tokenizer', 0),
                                      r'tokenizer: .*tokenizer/merges\.txt holds no merges'),
    'no merges.txt': (lambda b: (b / 'tokenizer_2' / 'merges.txt').unlink(),
                      r'tokenizer_2: .*tokenizer_2/merges\.txt is missing'),
    'merges that do not fit the vocabulary': (
        lambda b: _keep_all_merges(b / 'tokenizer_2', 20),
        r'tokenizer_2: the tokenizer does not read its own vocabulary \(\d+ of \d+ sampled words split'),
    'sample_size not a number': (lambda b: edit_json(b / 'unet' / 'config.json', lambda c: c.update(sample_size='big')),
                                 r"unet: .*unet/config\.json: sample_size must be an integer from 1 .*got 'big'"),
    'sample_size 0': (lambda b: edit_json(b / 'unet' / 'config.json', lambda c: c.update(sample_size=0)),
                      r'unet: .*unet/config\.json: sample_size must be an integer from 1 .*got 0'),
    'no sample_size': (lambda b: edit_json(b / 'unet' / 'config.json', lambda c: c.pop('sample_size')),
                       r"unet: .*unet/config\.json has no 'sample_size'"),
    'vae without blocks': (lambda b: edit_json(b / 'vae' / 'config.json', lambda c: c.update(block_out_channels=[])),
                           r'vae: .*vae/config\.json: block_out_channels must be a non-empty list'),
    'scaling_factor inf': (lambda b: (b / 'vae' / 'config.json').write_text(re.sub(
        r'"scaling_factor": [^,}]+', '"scaling_factor": 1e999', (b / 'vae' / 'config.json').read_text())),
        r'vae: .*vae/config\.json: scaling_factor must be a finite number > 0'),
    'text encoder layers as text': (
        lambda b: edit_json(b / 'text_encoder' / 'config.json', lambda c: c.update(num_hidden_layers='2')),
        r"text_encoder: .*text_encoder/config\.json: num_hidden_layers must be an integer from 1 .*got '2'"),
}


@pytest.mark.parametrize('case', sorted(BROKEN))
def test_bad_tokenizers_and_configs_are_refused_at_load_naming_file_and_field(tiny_sdxl, tmp_path, case):
    base, _ = copy_pair(tiny_sdxl, tmp_path)
    breakage, pattern = BROKEN[case]
    breakage(base)
    with pytest.raises(ModelFolderError, match=pattern):
        build(base)


# --- 7: ModelScope's batch_size -------------------------------------------------------------------------------


def test_batch_size_runs_a_list_one_input_at_a_time_and_is_refused_otherwise(sdxl_pipe):
    inputs = [{'text': 'a red circle', 'seed': 1, 'num_inference_steps': 3},
              {'text': 'a blue square', 'seed': 2, 'num_inference_steps': 3},
              {'text': 'a green star', 'seed': 3, 'num_inference_steps': 3}]
    batched = sdxl_pipe(inputs, batch_size=2)
    assert len(batched) == 3
    for output, single in zip(batched, inputs):
        assert np.array_equal(output['output_imgs'][0], sdxl_pipe(single)['output_imgs'][0])
    with pytest.raises(ValueError, match='batch_size applies to a list of inputs; this call has a single input'):
        sdxl_pipe({'text': 'a dog'}, batch_size=2)
    for bad in (0, 'two', 1.5, None):
        with pytest.raises(ValueError, match=f'batch_size must be an integer >= 1, got {bad!r}'):
            sdxl_pipe(inputs, batch_size=bad)


# --- 8: lone surrogates named ---------------------------------------------------------------------------------


def test_a_lone_surrogate_is_refused_naming_the_parameter(sdxl_pipe):
    for field in ('text', 'negative_prompt', 'prompt_2', 'negative_prompt_2'):
        with pytest.raises(ValueError, match=rf"^{field} holds a lone surrogate \('\\udcff' at character 2\)"):
            sdxl_pipe({'text': 'a dog', field: 'a \udcff'})


def test_a_command_line_argument_that_is_not_utf8_is_refused_naming_the_parameter(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env['LC_ALL'] = env['LANG'] = 'C.UTF-8'
    process = subprocess.run([sys.executable, '-m', 'modelscope_sdxl', 'generate', b'a \xff dog',
                              '--negative-prompt', b'\xfe', '--out', str(tmp_path / 'a.png')],
                             env=env, cwd=str(tmp_path), capture_output=True, timeout=240)
    err = process.stderr.decode('utf-8', 'replace')
    assert process.returncode == 2, err
    assert 'error: ' in err and 'holds a lone surrogate' in err and 'not UTF-8' in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


# --- 9: prompt weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('prompt, message', [
    ('a (red:1' + '0' * 400 + ') dog', r"text: the weight of 'red' is inf"),
    ('a (red:50) dog', r"text: the weight of 'red' is 50; prompt_weighting allows weights from -10 to 10"),
    ('(' * 3000 + 'red' + ')' * 3000, 'text: brackets nest more than 50 deep'),
    ('[' * 3000 + 'red' + ']' * 3000, 'text: brackets nest more than 50 deep'),
    ('(((((((((((((((((((((((((((red)))))))))))))))))))))))))))', r"the weight of 'red' is 13\.1"),
])
def test_extreme_prompt_weights_are_refused_before_any_model_work(sdxl_pipe, monkeypatch, prompt, message):
    import modelscope_sdxl.generation as generation

    def no_model_work(*args, **kwargs):
        raise AssertionError('the model ran')

    monkeypatch.setattr(generation, '_encode_both', no_model_work)
    with pytest.raises(ValueError, match=message):
        sdxl_pipe({'text': prompt, 'prompt_weighting': True})
    with pytest.raises(ValueError, match=message.replace('text', 'negative_prompt', 1)):
        sdxl_pipe({'text': 'a dog', 'negative_prompt': prompt, 'prompt_weighting': True})


def test_a_line_with_extreme_weights_is_invalid_not_failed(sdxl_pipe, tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text(json.dumps({'id': 'w', 'text': '(red:1' + '0' * 308 + ')', 'prompt_weighting': True})
                       + '\n', encoding='utf-8')
    run_batch(str(prompts), str(tmp_path / 'out'), pipe=sdxl_pipe, log=lambda _: None)
    [record] = manifest(str(tmp_path / 'out'))
    assert record['status'] == 'invalid' and 'ValueError: text: the weight of' in record['error']


def test_non_finite_output_on_the_cpu_does_not_blame_cuda(sdxl_pipe, monkeypatch):
    import modelscope_sdxl.generation as generation

    monkeypatch.setattr(generation, '_decode', lambda vae, latents: torch.full((1, 3, 64, 64), float('nan')))
    with pytest.raises(NonFiniteOutputError) as error:
        sdxl_pipe({'text': 'a dog', 'num_inference_steps': 2})
    message = str(error.value)
    assert message.startswith('decoded pixels contain NaN or inf; no image is returned. In float32 on the CPU')
    assert 'CUDA' not in message and 'half' not in message


# --- 10: an explicit CUDA device must exist -------------------------------------------------------------------


def test_an_explicit_cuda_device_without_cuda_is_refused(tiny_sdxl, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    for device in ('cuda', 'cuda:1', 'gpu:0'):
        with pytest.raises(ValueError, match=f"device '{device}' is not available here \\(this machine has 0 CUDA"):
            build(tiny_sdxl[0], device=device)
    code, _, err = run_cli(['generate', 'a dog', '--model', tiny_sdxl[0], '--device', 'cuda:0',
                            '--out', tmp_path / 'a.png', '--quiet'], capsys)
    assert code == 2 and "device 'cuda:0' is not available here" in err
    # ModelScope's default 'gpu' still means: a GPU where there is one.
    assert build(tiny_sdxl[0], device='gpu')({'text': 'a dog', 'num_inference_steps': 2})['output_imgs']


# --- 11: a repo's refiner stays inside the repo --------------------------------------------------------------


@pytest.mark.parametrize('model_id, message', [
    ('/etc', r"configuration\.json's model\.refiner '/etc' is an absolute or home path"),
    ('~', r"configuration\.json's model\.refiner '~' is an absolute or home path"),
    ('~/refiner', r"configuration\.json's model\.refiner '~/refiner' is an absolute or home path"),
    ('../../..', r"configuration\.json's model\.refiner '\.\./\.\./\.\.' leaves the repo"),
    ('../nowhere', r"configuration\.json's model\.refiner '\.\./nowhere' names a folder that the repo does not hold"),
    ('', r"model\.refiner in configuration\.json must be"),
])
def test_a_repo_may_name_only_hub_ids_and_folders_inside_it_as_refiner(tiny_sdxl, tmp_path, model_id, message):
    base, refiner = copy_pair(tiny_sdxl, tmp_path)
    edit_json(base / 'configuration.json', lambda c: c['model'].update(refiner={'model_id': model_id}))
    with pytest.raises(Exception, match=message) as error:
        build(base)
    assert os.path.expanduser('~') not in str(error.value) or os.path.expanduser('~') in str(tmp_path)
    # The caller may name any folder.
    assert build(base, refiner=str(refiner)).model.components.refiner is not None


def test_an_empty_refiner_is_an_error_not_no_refiner(tiny_sdxl, tmp_path):
    base, _ = copy_pair(tiny_sdxl, tmp_path)
    edit_json(base / 'configuration.json', lambda c: c['model'].update(refiner=''))
    with pytest.raises(ValueError, match="refiner must name a hub id or a folder, got ''"):
        build(base)
    with pytest.raises(ValueError, match="refiner must name a hub id or a folder, got ''"):
        build(tiny_sdxl[0], refiner='')


def test_a_downloaded_repo_may_not_name_a_folder_beside_it(tiny_sdxl, tmp_path, monkeypatch):
    cache = tmp_path / 'cache'
    monkeypatch.setenv('MODELSCOPE_CACHE', str(cache))
    shutil.copytree(os.path.dirname(tiny_sdxl[0]), cache / 'models' / 'owner')
    base = cache / 'models' / 'owner' / 'base'  # its configuration.json names '../refiner'
    with pytest.raises(ValueError, match=r"model\.refiner '\.\./refiner' leaves the repo"):
        build(base)


# --- 12: --from-png with hostile files ------------------------------------------------------------------------


def _png_with(path, chunk_text, size=(8, 8)):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(JSON_KEY, chunk_text)
    Image.new('RGB', size).save(path, pnginfo=info)


def _bomb_png(path):
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    ihdr = struct.pack('>IIBBBBB', 30000, 30000, 1, 0, 0, 0, 0)
    text = chunk(b'tEXt', JSON_KEY.encode() + b'\0' + b'{"text": "a dog"}')
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + text
                     + chunk(b'IDAT', zlib.compress(b'\0' * 10)) + chunk(b'IEND', b''))


def test_hostile_pngs_get_one_line_errors_and_exit_2(tmp_path, capsys):
    cases = {
        'deep.png': ('[' * 200000 + ']' * 200000, 'nests too deep'),
        'seed.png': (json.dumps({'text': 'a dog'})[:-1] + ', "seed": ' + '9' * 5000 + '}', 'seed must be an integer'),
        'model.png': (json.dumps({'text': 'a dog', 'model': ''}), "the model in '"),
        'revision.png': (json.dumps({'text': 'a dog', 'model': 'mini', 'refiner': ' '}), 'the refiner in'),
    }
    for name, (chunk_text, expected) in cases.items():
        _png_with(tmp_path / name, chunk_text)
    _bomb_png(tmp_path / 'bomb.png')
    cases['bomb.png'] = (None, 'is too large an image to open')
    for name, (_, expected) in cases.items():
        code, out, err = run_cli(['generate', '--from-png', tmp_path / name, '--out', tmp_path / 'x.png'], capsys)
        assert code == 2, (name, err)
        assert expected in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, (name, err)
        assert not os.path.exists(tmp_path / 'x.png')


# --- 13: Ray resources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('flag, value', [('--cpus-per-worker', 'nan'), ('--gpus-per-worker', 'inf'),
                                          ('--cpus-per-worker', '-inf')])
def test_ray_resources_must_be_finite(tmp_path, capsys, flag, value):
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a dog"}\n')
    code, _, err = run_cli(['batch', prompts, '--out', tmp_path / 'out', '--ray', 'local', f'{flag}={value}'], capsys)
    name = flag[2:].replace('-', '_')
    assert code == 2 and f'{name} must be a finite number >= 0, got {float(value)!r}' in err
    assert not os.path.exists(tmp_path / 'out')


# --- 15: links out of a downloaded repo -----------------------------------------------------------------------


def test_links_may_not_leave_a_downloaded_repo(tiny_sdxl, tmp_path, monkeypatch):
    cache = tmp_path / 'cache'
    monkeypatch.setenv('MODELSCOPE_CACHE', str(cache))
    repo = cache / 'models' / 'owner--base'
    snapshot = repo / 'snapshots' / 'v1'
    shutil.copytree(tiny_sdxl[0], snapshot)
    edit_json(snapshot / 'configuration.json', lambda c: c['model'].pop('refiner'))
    # Links into the repo's blobs, as the hub's cache makes them, are followed.
    (repo / 'blobs').mkdir()
    config = snapshot / 'unet' / 'config.json'
    shutil.move(str(config), str(repo / 'blobs' / 'abc'))
    config.symlink_to(os.path.relpath(repo / 'blobs' / 'abc', config.parent))
    assert build(snapshot)({'text': 'a dog', 'num_inference_steps': 2})['output_imgs']
    # A link that leaves the repo is refused, naming it.
    outside = tmp_path / 'outside.json'
    shutil.copy(str(repo / 'blobs' / 'abc'), str(outside))
    config.unlink()
    config.symlink_to(outside)
    with pytest.raises(ModelFolderError, match=r'unet/config\.json in the downloaded repo owner--base is a link '
                                               'that leaves the repo'):
        build(snapshot)
    # A folder the caller names outside the cache is the caller's: its links are followed.
    mine = tmp_path / 'mine'
    shutil.copytree(snapshot, mine, symlinks=True)
    assert os.path.islink(mine / 'unet' / 'config.json')
    assert build(mine)({'text': 'a dog', 'num_inference_steps': 2})['output_imgs']
