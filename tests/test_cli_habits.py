"""The command line as A1111, ComfyUI and diffusers users type it: their flags and words, files that are
never replaced, batch counts, LoRAs by flag and by prompt tag, weighting on by default, typos with a
suggestion, and a command that behaves in pipes, logs and terminals."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from PIL import Image

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl import cli
from modelscope_sdxl.cli.png import read_png_parameters
from modelscope_sdxl.cli.sources import SOURCE_KEYS
from modelscope_sdxl.cli.threads import THREADS_VARIABLE, _cgroup_cpus, cli_threads
from modelscope_sdxl.cli.words import in_cli_words

from subprocess_env import command_env
from test_lora import make_lora

PROMPT = 'a red circle on a blue background'
TIMEOUT = 240


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_bgr(path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def call_parameters(record):
    return {k: v for k, v in record.items() if k not in SOURCE_KEYS and k != 'lora'}


# ---------------------------------------------------------------------------------------------
# Flags in A1111's words
# ---------------------------------------------------------------------------------------------
def test_a1111_flags_are_the_parameters_they_name(tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    out = tmp_path / 'a.png'
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 4, '--cfg', 6.5,
                                 '--sampler', 'DPM++ 2M Karras', '-W', 48, '-H', 32, '-o', out, '--quiet'], capsys)
    assert code == 0, err
    record = read_png_parameters(str(out))
    assert (record['guidance_scale'], record['scheduler'], record['width'], record['height']) == \
        (6.5, 'dpmpp_2m_karras', 48, 32)
    expected = sdxl_pipe({'text': PROMPT, 'num_inference_steps': 4, 'guidance_scale': 6.5,
                          'scheduler': 'dpmpp_2m_karras', 'width': 48, 'height': 32, 'seed': record['seed']})
    assert np.array_equal(read_bgr(out), expected['output_imgs'][0])
    # --cfg-scale is the same flag; 'Euler a' is A1111's euler_ancestral.
    args = cli.build_parser().parse_args(['generate', 'x', '--cfg-scale', '3', '--sampler', 'Euler a'])
    assert (args.guidance_scale, args.scheduler) == (3.0, 'euler_ancestral')


def test_seed_minus_one_draws_a_random_seed_that_the_file_records(tiny_sdxl, tmp_path, capsys):
    out = tmp_path / 'r.png'
    code, _, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', -1, '-o', out],
                           capsys)
    assert code == 0, err
    seed = read_png_parameters(str(out))['seed']
    assert 0 <= seed < 2**32 and err.rstrip().endswith(f'seed: {seed}')


def test_help_shows_defaults_and_the_a1111_words():
    text = cli.build_parser()._subparsers._group_actions[0].choices['generate'].format_help()
    text = ' '.join(text.split())
    for expected in ('-o OUT, --out OUT', '(default: result.png)', '-n N, --batch-count N', '(default: 30)',
                     '--guidance-scale GUIDANCE_SCALE, --cfg GUIDANCE_SCALE, --cfg-scale GUIDANCE_SCALE',
                     '(default: 5.0)', '--scheduler NAME, --sampler NAME', "'DPM++ 2M Karras'", '-W WIDTH',
                     '-H HEIGHT', '-1: a random seed', '--no-prompt-weighting', '--lora PATH_OR_ID[:SCALE]',
                     '<lora:NAME:SCALE>', '--overwrite'):
        assert expected in text, expected


@pytest.mark.parametrize('argv,hint', [
    (['generate', 'x', '--stesp', '3'], 'did you mean --steps?'),
    (['generate', 'x', '--negativ-prompt', 'y'], 'did you mean --negative-prompt?'),
    (['generate', 'x', '--refiner-mode', 'ensemle'], "did you mean 'ensemble'?"),
    (['generat', 'x'], "did you mean 'generate'?"),
    (['batch', 'p.jsonl', '--out', 'o', '--retry-invalidd'], 'did you mean --retry-invalid?'),
])
def test_a_close_typo_gets_a_suggestion(argv, hint, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.splitlines()[-1].endswith(hint), err


@pytest.mark.parametrize('message', [
    "argument --sampler: invalid choice: 'eulr' (choose from 'euler', 'euler_ancestral')",  # Python < 3.12.8
    "argument --sampler: invalid choice: 'eulr' (choose from euler, euler_ancestral)",  # later versions
])
def test_the_suggestion_reads_both_forms_of_argparses_message(message):
    from modelscope_sdxl.cli.flags import SuggestingParser

    assert SuggestingParser()._hint(message) == "; did you mean 'euler'?"


# ---------------------------------------------------------------------------------------------
# Files and counts
# ---------------------------------------------------------------------------------------------
def test_an_existing_file_is_kept_and_the_next_free_name_used(tiny_sdxl, tmp_path, capsys):
    out = tmp_path / 'result.png'
    out.write_bytes(b'not to be replaced')
    (tmp_path / 'result-1.png').write_bytes(b'nor this')
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 1, '-o', out],
                                capsys)
    assert code == 0, err
    assert stdout == f"{tmp_path / 'result-2.png'}\n"
    assert f'{out} exists; wrote {tmp_path / "result-2.png"} instead' in err
    assert out.read_bytes() == b'not to be replaced' and (tmp_path / 'result-1.png').read_bytes() == b'nor this'
    code, stdout, _ = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 1, '-o', out,
                               '--overwrite', '--quiet'], capsys)
    assert code == 0 and stdout == f'{out}\n'
    assert np.array_equal(read_bgr(out), read_bgr(tmp_path / 'result-2.png'))


def test_batch_count_makes_calls_with_the_following_seeds_and_names_carry_index_and_seed(
        tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    out = tmp_path / 'cat.png'
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 10,
                                 '--num-images', 2, '-n', 3, '-o', out], capsys)
    assert code == 0, err
    names = [os.path.basename(p) for p in stdout.split()]
    assert names == ['cat-1-10.png', 'cat-2-11.png', 'cat-3-12.png', 'cat-4-13.png', 'cat-5-14.png', 'cat-6-15.png']
    assert err.rstrip().endswith('seeds: 10, 11, 12, 13, 14, 15')
    # Call 2 (k = 1) started at seed 10 + 1 * 2: its images are those of that call alone.
    second_call = sdxl_pipe({'text': PROMPT, 'num_inference_steps': 2, 'seed': 12, 'num_images_per_prompt': 2})
    for name, image in zip(names[2:4], second_call['output_imgs']):
        assert np.abs(read_bgr(tmp_path / name).astype(int) - image.astype(int)).max() <= 2
        assert read_png_parameters(str(tmp_path / name))['num_images_per_prompt'] == 1
    # Again: the indexes continue after the highest one, nothing is replaced.
    code, stdout, _ = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 10, '-n', 2,
                               '-o', out, '--quiet'], capsys)
    assert code == 0 and [os.path.basename(p) for p in stdout.split()] == ['cat-7-10.png', 'cat-8-11.png']


def test_batch_count_without_a_seed_draws_one_and_the_calls_follow_it(tiny_sdxl, tmp_path, capsys):
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '-n', 2,
                                 '-o', tmp_path / 'r.png'], capsys)
    assert code == 0, err
    seeds = [read_png_parameters(p)['seed'] for p in stdout.split()]
    assert seeds[1] == seeds[0] + 1


# ---------------------------------------------------------------------------------------------
# Prompts: weighting on by default, LoRAs by flag and by tag
# ---------------------------------------------------------------------------------------------
def test_weighting_is_read_by_default_on_the_command_line_only(tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    weighted = 'a (red:1.4) circle on a blue background'
    out = tmp_path / 'w.png'
    code, _, err = run_cli(['generate', weighted, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 3, '-o', out,
                            '--quiet'], capsys)
    assert code == 0, err
    assert read_png_parameters(str(out))['prompt_weighting'] is True
    on = sdxl_pipe({'text': weighted, 'num_inference_steps': 2, 'seed': 3, 'prompt_weighting': True})
    assert np.array_equal(read_bgr(out), on['output_imgs'][0])
    # The Python API keeps diffusers' literal reading.
    assert sdxl_pipe({'text': weighted, 'num_inference_steps': 2, 'seed': 3})['parameters']['prompt_weighting'] is False
    literal = tmp_path / 'literal.png'
    code, _, _ = run_cli(['generate', weighted, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 3, '-o', literal,
                          '--no-prompt-weighting', '--quiet'], capsys)
    assert code == 0 and read_png_parameters(str(literal))['prompt_weighting'] is False
    off = sdxl_pipe({'text': weighted, 'num_inference_steps': 2, 'seed': 3})
    assert np.array_equal(read_bgr(literal), off['output_imgs'][0])


@pytest.fixture(scope='module')
def lora_dir(tiny_sdxl, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp('loras')
    os.makedirs(folder / 'styles')
    unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_sdxl[0], 'unet'))
    make_lora(unet, str(folder / 'styles'), 1, 'ink.safetensors')
    return folder


def test_lora_flag_and_prompt_tag_give_the_pipelines_lora_image(tiny_sdxl, lora_dir, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    ink = str(lora_dir / 'styles' / 'ink.safetensors')
    reference = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', lora=[(ink, 0.5)])
    expected = reference({'text': PROMPT, 'num_inference_steps': 2, 'seed': 4})['output_imgs'][0]

    by_flag = tmp_path / 'flag.png'
    code, _, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 4,
                            '--lora', f'{ink}:0.5', '-o', by_flag, '--quiet'], capsys)
    assert code == 0, err
    assert np.array_equal(read_bgr(by_flag), expected)
    record = read_png_parameters(str(by_flag))
    assert record['lora'] == [{'path': ink, 'scale': 0.5}] and record['text'] == PROMPT

    # A1111's tag, found in a subfolder of --lora-dir, taken out of the encoded text, kept in the file.
    tagged = f'{PROMPT} <lora:ink:0.5>'
    by_tag = tmp_path / 'tag.png'
    code, _, err = run_cli(['generate', tagged, '--model', tiny_sdxl[0], '--steps', 2, '--seed', 4,
                            '--lora-dir', lora_dir, '-o', by_tag, '--quiet'], capsys)
    assert code == 0, err
    assert np.array_equal(read_bgr(by_tag), expected)
    record = read_png_parameters(str(by_tag))
    assert record['text'] == tagged and 'lora' not in record

    # Both files make their image again.
    for original in (by_flag, by_tag):
        again = tmp_path / f'again-{original.name}'
        code, _, err = run_cli(['generate', '--from-png', original, '--lora-dir', lora_dir, '-o', again, '--quiet'],
                               capsys)
        assert code == 0, err
        assert np.array_equal(read_bgr(again), expected)


def test_a_local_lora_that_does_not_exist_never_reaches_the_hub(tmp_path, capsys, monkeypatch):
    import modelscope_sdxl.hub as hub

    asked = []
    monkeypatch.setattr(hub, 'resolve_folder', lambda *a, **k: asked.append(a))
    monkeypatch.chdir(tmp_path)
    for lora in ('x.safetensors', 'loras/x.safetensors:0.8', './x'):
        code, _, err = run_cli(['generate', PROMPT, '--lora', lora, '-o', tmp_path / 'o.png'], capsys)
        assert code == 2 and 'no such file or folder' in err and 'hub' not in err.split('(')[0], err
    assert asked == [] and not (tmp_path / 'o.png').exists()


# ---------------------------------------------------------------------------------------------
# A1111 files
# ---------------------------------------------------------------------------------------------
def _a1111_png(path, text):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text('parameters', text)
    Image.new('RGB', (8, 8)).save(path, pnginfo=info)


def test_an_a1111_png_with_a_checkpoint_name_runs_on_the_model_given(tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    source = tmp_path / 'a1111.png'
    _a1111_png(source, 'portrait: a (red:1.2) circle\nNegative prompt: ugly, style: bad\nSteps: 4, '
               'Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 9, Size: 64x48, '
               'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Clip skip: 2, Version: v1.10.1')
    out = tmp_path / 'out.png'
    code, _, err = run_cli(['generate', '--from-png', source, '--model', tiny_sdxl[0], '-o', out], capsys)
    assert code == 0, err
    assert "note: --from-png: the file's model 'sd_xl_base_1.0' is not a hub id or a path here; using --model" in err
    record = read_png_parameters(str(out))
    expected = {'text': 'portrait: a (red:1.2) circle', 'negative_prompt': 'ugly, style: bad',
                'num_inference_steps': 4, 'scheduler': 'dpmpp_2m_karras', 'guidance_scale': 6.0, 'seed': 9,
                'width': 64, 'height': 48, 'prompt_weighting': True, 'clip_skip': None}
    assert {k: record[k] for k in expected} == expected
    assert np.array_equal(read_bgr(out), sdxl_pipe(call_parameters(record))['output_imgs'][0])


# ---------------------------------------------------------------------------------------------
# Pipes, logs, terminals, messages, threads
# ---------------------------------------------------------------------------------------------
def test_schema_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    env = command_env(str(tmp_path / 'child'))
    result = subprocess.run(f'{sys.executable} -m modelscope_sdxl schema | head -1', shell=True, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT, executable='/bin/bash')
    assert result.stdout == '{\n' and result.stderr == '', result.stderr


def test_progress_bars_show_in_a_terminal(tmp_path):
    """In a terminal the bars show; piped into a log they do not (tests/test_cli.py)."""
    env = command_env(str(tmp_path / 'child'))
    controller, terminal = pty.openpty()
    # A terminal 100 columns wide (a new pseudo-terminal has 0, where tqdm draws an empty bar).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 100, 0, 0))
    try:
        process = subprocess.Popen([sys.executable, '-m', 'modelscope_sdxl', 'generate', PROMPT, '--seed', '0',
                                    '-o', str(tmp_path / 'p.png')], env=env, cwd=str(tmp_path),
                                   stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        seen = b''
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            seen += chunk
        assert process.wait(timeout=TIMEOUT) == 0, seen
    finally:
        os.close(controller)
    text = seen.decode(errors='replace')
    assert re.search(r'base: +\d+%\|', text) and re.search(r'refiner: +\d+%\|', text), text


def test_batch_quiet_prints_nothing_but_writes_everything(tmp_path, capsys):
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a red circle on a blue background", "seed": 1, "id": "one"}\n')
    code, stdout, err = run_cli(['batch', prompts, '--out', tmp_path / 'o', '--quiet'], capsys)
    assert code == 0 and stdout == '' and err == ''
    assert sorted(os.listdir(tmp_path / 'o')) == ['manifest.jsonl', 'one-1.png']


def test_ray_auto_without_a_cluster_speaks_of_this_commands_flags(tmp_path, capsys):
    pytest.importorskip('ray', reason='Ray is an optional extra')
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a dog"}\n')
    code, _, err = run_cli(['batch', prompts, '--out', tmp_path / 'o', '--ray', 'auto'], capsys)
    assert code == 2, err
    line = err.splitlines()[-1]
    assert '--ray auto: no Ray cluster is running on this machine' in line and '--ray local' in line, err
    assert '--address' not in line and 'RAY_ADDRESS' not in line


@pytest.mark.parametrize('core,cli_words', [
    ("refiner_mode='ensemble' needs a refiner, and this pipeline has none; use refiner_mode='none' or load one "
     'with pipeline(..., refiner=...)',
     '--refiner-mode ensemble needs a refiner, and this pipeline has none; use --refiner-mode none or load one '
     'with --refiner'),
    ('num_inference_steps=2 with high_noise_frac=0.3 leaves a stage with no step; use more steps',
     '--num-inference-steps 2 with --high-noise-frac 0.3 leaves a stage with no step; use more steps'),
    ("seed must be an integer >= 0, got -5", "seed must be an integer >= 0, got -5"),
    ('GET http://hub/api/v1/models/a/b/repo?revision=v1&seed=2 failed', 'GET http://hub/api/v1/models/a/b/repo?'
     'revision=v1&seed=2 failed'),
])
def test_messages_name_the_flags_on_the_command_line(core, cli_words):
    assert in_cli_words(core) == cli_words


def test_torch_threads_follow_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    assert cli_threads() == min(len(os.sched_getaffinity(0)), _cgroup_cpus() or 10**6)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert cli_threads() is None  # torch reads OMP_NUM_THREADS itself
    monkeypatch.setenv(THREADS_VARIABLE, '2')
    assert cli_threads() == 2
    monkeypatch.setenv(THREADS_VARIABLE, 'many')
    with pytest.raises(ValueError, match=f'{THREADS_VARIABLE} must be a positive integer'):
        cli_threads()
    quota = tmp_path / 'cpu.max'
    quota.write_text('150000 100000\n')
    assert _cgroup_cpus(str(quota)) == 1
    quota.write_text('max 100000\n')
    assert _cgroup_cpus(str(quota)) is None


def test_the_usage_example_30_steps_at_0_8_runs_23_base_and_7_refiner_steps(sdxl_pipe):
    """docs/usage.md: the base runs the steps whose timestep is at or above (1 - 0.8) x 1000."""
    steps = []
    sdxl_pipe({'text': 'a dog', 'num_inference_steps': 30, 'high_noise_frac': 0.8, 'seed': 0,
               'callback': lambda stage, step, total: steps.append((stage, total))})
    assert steps.count(('base', 23)) == 23 and steps.count(('refiner', 7)) == 7 and len(steps) == 30


def test_modelscope_sdxl_quiet_leaves_only_the_modelscope_commands_banner(tmp_path):
    """modelscope-hub prints its banner before it loads any plugin; after it, --quiet prints nothing."""
    from modelscope_hub.constants import MODELSCOPE_ASCII

    from subprocess_env import console_script

    env = command_env(str(tmp_path / 'child'))
    out = tmp_path / 'q.png'
    result = subprocess.run(console_script('modelscope') + ['sdxl', 'generate', PROMPT, '-o', str(out), '--quiet'],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout == f'{out}\n', result.stderr
    assert result.stderr == MODELSCOPE_ASCII + '\n'
    plain = subprocess.run([sys.executable, '-m', 'modelscope_sdxl', 'generate', PROMPT, '-o', str(out), '--quiet',
                            '--overwrite'], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert plain.returncode == 0 and plain.stderr == ''


@pytest.mark.parametrize('recorded', ['style.safetensors', [{'path': 1}], [{'path': 'a/b', 'scale': 'big'}],
                                      [{'path': 'a/b', 'scale': float('nan')}]])
def test_a_files_malformed_lora_record_is_refused_naming_it(recorded, tmp_path, capsys):
    from modelscope_sdxl.cli.png import save_png

    source = tmp_path / 'bad-lora.png'
    save_png(str(source), np.zeros((8, 8, 3), np.uint8), {'text': 'a dog'}, {'lora': recorded})
    code, _, err = run_cli(['generate', '--from-png', source, '-o', tmp_path / 'o.png'], capsys)
    assert code == 2 and "--from-png: the file's 'lora' must be a list of" in err.splitlines()[-1], err
