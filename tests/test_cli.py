"""The command line: ``modelscope-sdxl generate`` (in-process through ``cli.main`` and as real
subprocesses, also as ``modelscope sdxl generate``), PNG files that carry their parameters, the
``--from-png`` round trip, and errors that end in one line and an exit code, never a traceback."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl import cli
from modelscope_sdxl.mini import mini_model_dir
from modelscope_sdxl.mini.scenes import read_image
from modelscope_sdxl.cli.png import JSON_KEY, read_png_parameters, save_png
from modelscope_sdxl.cli.sources import SOURCE_KEYS

from hub_fixtures import hub, hub_repos, hub_server  # noqa: F401  (fixtures)
from hub_stub import BASE_DECOYS, BASE_ID, REFINER_ID
from subprocess_env import command_env, console_script, foreign_hosts

PROMPT = 'a red circle on a blue background'
TIMEOUT = 240  # seconds any one subprocess may take


def run_cli(argv, capsys):
    """cli.main(argv) in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_bgr(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f'{path} is not a readable image'
    return image


def call_parameters(record):
    """A PNG's record without the model keys: the pipeline input that made it."""
    return {k: v for k, v in record.items() if k not in SOURCE_KEYS}


def assert_one_line_error(err, expected):
    assert 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, 'nothing on stderr'
    assert 'error: ' in lines[-1] and expected in lines[-1], err
    # Only argparse's usage lines may precede the error line.
    assert all(line.startswith(('usage:', ' ')) for line in lines[:-1]), err


# ---------------------------------------------------------------------------------------------
# In-process: generate, PNG contents, --from-png
# ---------------------------------------------------------------------------------------------
def test_generate_writes_the_pipelines_pixels_and_every_parameter_into_the_png(tiny_sdxl, sdxl_pipe, tmp_path,
                                                                               capsys):
    out = tmp_path / 'circle.png'
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--seed', 3, '--steps', 5,
                                 '--negative-prompt', 'blurry', '--guidance-scale', 6.5, '--out', out, '--quiet'],
                                capsys)
    assert (code, stdout, err) == (0, f'{out}\n', '')

    direct = sdxl_pipe({'text': PROMPT, 'seed': 3, 'num_inference_steps': 5, 'negative_prompt': 'blurry',
                        'guidance_scale': 6.5})
    assert np.array_equal(read_bgr(out), direct['output_imgs'][0])

    record = read_png_parameters(str(out))
    assert record == {**direct['parameters'], 'model': tiny_sdxl[0]}
    with Image.open(out) as png:
        assert json.loads(png.text[JSON_KEY]) == record
        a1111 = png.text['parameters'].split('\n')
    assert a1111[:2] == [PROMPT, 'Negative prompt: blurry']
    for item in ('Steps: 5', 'Seed: 3', 'CFG scale: 6.5', 'Size: 64x64', 'Refiner mode: ensemble',
                 f'Model: {tiny_sdxl[0]}'):
        assert item in a1111[2].split(', '), a1111[2]


def test_from_png_makes_the_same_pixels_again_and_flags_override_the_file(tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    # No --seed: the seed drawn at random is what the file records.
    first = tmp_path / 'first.png'
    code, stdout, _ = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 4, '--num-images', 2,
                               '--scheduler', 'dpmpp_2m', '--crops-coords-top-left', 8, 0, '--prompt-weighting',
                               '--out', first, '--quiet'], capsys)
    assert code == 0
    # Several images: OUT-INDEX-SEED.png, each named with the seed that remakes it.
    made = [tmp_path / name for name in stdout.split()]
    records = [read_png_parameters(str(path)) for path in made]
    assert [p.name for p in made] == [f"first-{i + 1}-{r['seed']}.png" for i, r in enumerate(records)]
    # Each file records its own image: the call's parameters with its seed and one image.
    assert records[1] == {**records[0], 'seed': records[0]['seed'] + 1}
    assert records[0]['num_images_per_prompt'] == 1
    record = records[0]
    assert (record['scheduler'], record['crops_coords_top_left'], record['prompt_weighting']) == \
        ('dpmpp_2m', [8, 0], True)

    for original, own in zip(made, records):
        again = tmp_path / f'again-{own["seed"]}.png'
        code, stdout, _ = run_cli(['generate', '--from-png', original, '--out', again, '--quiet'], capsys)
        assert code == 0 and stdout.split() == [str(again)]
        # The same picture (a batch's arithmetic may differ from one image's in the last bits).
        assert np.abs(read_bgr(again).astype(int) - read_bgr(original).astype(int)).max() <= 2
        assert read_png_parameters(str(again)) == own

    # Flags override the file's values; the rest of the file is kept.
    other = tmp_path / 'other.png'
    code, _, _ = run_cli(['generate', '--from-png', made[0], '--seed', 5,
                          '--no-prompt-weighting', '--out', other, '--quiet'], capsys)
    assert code == 0
    changed = read_png_parameters(str(other))
    assert changed == {**record, 'seed': 5, 'num_images_per_prompt': 1, 'prompt_weighting': False}
    assert np.array_equal(read_bgr(other), sdxl_pipe(call_parameters(changed))['output_imgs'][0])

    # Another refiner mode drops the file's parameters that do not apply to it.
    base_only = tmp_path / 'base-only.png'
    code, _, _ = run_cli(['generate', '--from-png', other, '--refiner-mode', 'none', '--out', base_only, '--quiet'],
                         capsys)
    assert code == 0
    alone = read_png_parameters(str(base_only))
    assert alone['refiner_mode'] == 'none' and 'high_noise_frac' not in alone and 'aesthetic_score' not in alone
    assert alone['seed'] == 5 and alone['text'] == PROMPT
    assert np.array_equal(read_bgr(base_only), sdxl_pipe(call_parameters(alone))['output_imgs'][0])


def test_from_png_reads_a_file_with_only_the_automatic1111_text(tiny_sdxl, sdxl_pipe, tmp_path, capsys):
    source = tmp_path / 'a1111.png'
    Image.new('RGB', (8, 8)).save(source, pnginfo=_text_chunk(
        'parameters', f'{PROMPT}\nNegative prompt: blurry\nSteps: 4, Sampler: euler, CFG scale: 6.0, Seed: 9, '
        'Size: 64x48, Refiner mode: sdedit, Refiner strength: 0.5'))
    out = tmp_path / 'out.png'
    code, _, _ = run_cli(['generate', '--from-png', source, '--model', tiny_sdxl[0], '--out', out, '--quiet'], capsys)
    assert code == 0
    expected = sdxl_pipe({'text': PROMPT, 'negative_prompt': 'blurry', 'num_inference_steps': 4,
                          'guidance_scale': 6.0, 'seed': 9, 'width': 64, 'height': 48, 'refiner_mode': 'sdedit',
                          'strength': 0.5})
    assert np.array_equal(read_bgr(out), expected['output_imgs'][0])
    assert call_parameters(read_png_parameters(str(out))) == expected['parameters']


def _text_chunk(key, text):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, text)
    return info


# ---------------------------------------------------------------------------------------------
# In-process: bad command lines
# ---------------------------------------------------------------------------------------------
def _bad_pngs(folder, base_dir):
    image = np.zeros((8, 8, 3), np.uint8)
    plain = os.path.join(folder, 'plain.png')
    cv2.imwrite(plain, image)
    not_png = os.path.join(folder, 'not-a.png')
    with open(not_png, 'w') as f:
        f.write('text, not an image')
    unknown = os.path.join(folder, 'unknown.png')
    save_png(unknown, image, {'text': 'a dog', 'bogus': 1})
    wrong_type = os.path.join(folder, 'wrong-type.png')
    save_png(wrong_type, image, {'text': 'a dog', 'num_inference_steps': 'many'})
    a1111_model = os.path.join(folder, 'a1111-model.png')
    Image.new('RGB', (8, 8)).save(a1111_model, pnginfo=_text_chunk(
        'parameters', 'a dog\nSteps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 9, '
        'Size: 64x64, Model hash: 31e35c80fc, Model: sd_xl_base_1.0'))
    a1111_sampler = os.path.join(folder, 'a1111-sampler.png')
    Image.new('RGB', (8, 8)).save(a1111_sampler, pnginfo=_text_chunk(
        'parameters', 'a dog\nSteps: 4, Sampler: Euler, Schedule type: Karras, CFG scale: 6, Seed: 9'))
    return {'plain': plain, 'not_png': not_png, 'unknown': unknown, 'wrong_type': wrong_type,
            'a1111_model': a1111_model, 'a1111_sampler': a1111_sampler}


# (argv after 'generate', text expected in the error line). 'BASE' is the tiny base folder.
BAD_COMMAND_LINES = [
    (['x', '--steps', 'abc'], "argument --num-inference-steps/--steps: invalid int value: 'abc'"),
    (['x', '--scheduler', 'nope'], "argument --scheduler/--sampler: invalid choice: 'nope'"),
    (['x', '--bogus'], 'unrecognized arguments: --bogus'),
    # A close typo gets a suggestion, for flags and choices alike.
    (['x', '--cgf', '7'], 'unrecognized arguments: --cgf; did you mean --cfg?'),
    (['x', '--sampler', 'eulr'], "; did you mean 'euler'?"),
    (['x', '--batch-count', '0'], '--batch-count must be an integer >= 1, got 0'),
    (['x', '--lora', 'MISSING'], 'no such file or folder'),
    (['x', '--lora', 'loras/style.safetensors:0.5'], "no such file or folder 'loras/style.safetensors'"),
    (['x <lora:style:0.5>'], "<lora:style>: no style.safetensors in --lora-dir '.'"),
    (['--from-png', 'a1111_model'], "the file's model 'sd_xl_base_1.0' is neither a hub id (owner/name) nor a local "
     'path (A1111 records checkpoint names); give the model with --model'),
    (['--from-png', 'a1111_sampler'], "the file's sampler 'Euler with Schedule type Karras' has no equivalent here; "
     'choose one with --sampler'),
    (['x', '--original-size', '64'], 'argument --original-size: expected 2 arguments'),
    ([], 'give a PROMPT, or --from-png FILE'),
    (['x', '--steps', '0'], 'num_inference_steps must be an integer >= 1 and <= 1000, got 0'),
    (['x', '--guidance-scale', 'nan'], 'guidance_scale must be a number >= 0 and <= 100, got nan'),
    (['x', '--high-noise-frac', '1.5'], 'high_noise_frac must be a number > 0 and < 1, got 1.5'),
    (['x', '--aspect-ratio', '16x9'], "aspect_ratio must be 'W:H'"),
    (['x', '--out', 'x.jpg'], "--out must be a .png file, got 'x.jpg'"),
    (['--from-png', 'MISSING'], '--from-png: no such file'),
    (['--from-png', 'plain'], 'carries no generation parameters'),
    (['--from-png', 'not_png'], 'is not a readable PNG file'),
    (['--from-png', 'unknown'], "unknown parameter(s) 'bogus'"),
    (['--from-png', 'wrong_type'], "num_inference_steps must be an integer >= 1 and <= 1000, got str 'many'"),
    (['x', '--model', 'MISSING'], 'does not exist'),
    (['x', '--revision', 'v1.0.0'], "--revision applies to a hub model, not to the built-in 'mini' model"),
    (['x', '--model', 'tiny', '--revision', 'v1.0.0'], "not to the built-in 'tiny' model"),
    (['x', '--model', 'BASE', '--revision', 'v1.0.0'], '--revision applies to a hub model'),
    (['x', '--model', 'BASE', '--device', 'tpu'], "device must be 'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N'"),
    # Checked against the loaded model.
    (['x', '--model', 'BASE', '--height', '30'], 'height must be a multiple of 8 between 8 and 4096, got 30'),
    (['x', '--model', 'BASE', '--refiner-mode', 'sdedit', '--high-noise-frac', '0.5'],
     "high_noise_frac applies only to --refiner-mode ensemble, not 'sdedit'"),
    (['x', '--model', 'BASE', '--refiner', 'none', '--refiner-mode', 'ensemble'],
     '--refiner-mode ensemble needs a refiner, and this pipeline has none; use --refiner-mode none or load one '
     'with --refiner'),
]


@pytest.mark.parametrize('argv,expected', BAD_COMMAND_LINES,
                         ids=[' '.join(a) or 'no-prompt' for a, _ in BAD_COMMAND_LINES])
def test_a_bad_command_line_exits_2_with_one_line_and_no_traceback(argv, expected, tiny_sdxl, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('MODELSCOPE_SDXL_CACHE', str(tmp_path / 'cache'))
    files = _bad_pngs(str(tmp_path), tiny_sdxl[0])
    names = {'MISSING': str(tmp_path / 'missing'), 'BASE': tiny_sdxl[0], **files}
    argv = [names.get(a, a) for a in argv]
    out = tmp_path / 'out.png'
    if '--out' not in argv:
        argv += ['--out', str(out)]
    code, stdout, err = run_cli(['generate'] + argv + ['--quiet'], capsys)
    assert code == 2, err
    assert_one_line_error(err, expected)
    assert stdout == '' and not out.exists()
    assert not (tmp_path / 'cache').exists(), 'the built-in model was built for a command line that cannot run'


def test_hub_errors_end_in_one_line_unreachable_hub_exits_1_unknown_repo_exits_2(hub, tmp_path, capsys):
    code, _, err = run_cli(['generate', 'x', '--model', 'test-owner/no-such-model', '--revision', 'v1.0.0',
                            '--out', tmp_path / 'a.png', '--quiet'], capsys)
    assert code == 2
    assert_one_line_error(err, 'test-owner/no-such-model')

    hub.stub.stop()
    code, _, err = run_cli(['generate', 'x', '--model', BASE_ID, '--revision', 'v1.0.0',
                            '--out', tmp_path / 'b.png', '--quiet'], capsys)
    assert code == 1
    assert_one_line_error(err, f"cannot reach the ModelScope hub to download '{BASE_ID}' at revision 'v1.0.0'")
    assert not (tmp_path / 'a.png').exists() and not (tmp_path / 'b.png').exists()


def test_a_subcommand_is_one_entry_of_the_list_for_both_commands(monkeypatch, capsys):
    import argparse

    from modelscope_sdxl.cli.plugin import SDXLCommand

    def add_parser(subparsers):
        parser = subparsers.add_parser('hello', help='greet')
        parser.add_argument('name')
        return parser

    def run(args):
        if args.name == 'nobody':
            raise ValueError('nobody to greet')
        print(f'hello {args.name}')
        return 0

    monkeypatch.setattr(cli, 'SUBCOMMANDS', cli.SUBCOMMANDS + [cli.Subcommand(add_parser, run)])
    assert run_cli(['hello', 'world'], capsys) == (0, 'hello world\n', '')
    code, _, err = run_cli(['hello', 'nobody'], capsys)
    assert code == 2 and err == 'modelscope-sdxl: error: nobody to greet\n'

    # Under `modelscope`: the plugin registers the same list; execute() raises SystemExit on failure.
    host = argparse.ArgumentParser(prog='modelscope')
    SDXLCommand.register(host.add_subparsers(dest='command'))
    args = host.parse_args(['sdxl', 'hello', 'there'])
    assert args._command is SDXLCommand
    args._command(args).execute()
    assert capsys.readouterr().out == 'hello there\n'
    args = host.parse_args(['sdxl', 'hello', 'nobody'])
    with pytest.raises(SystemExit) as exit_info:
        args._command(args).execute()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == 'modelscope sdxl: error: nobody to greet\n'


# ---------------------------------------------------------------------------------------------
# Real subprocesses
# ---------------------------------------------------------------------------------------------
def test_python_m_modelscope_sdxl_generate_on_the_default_model(tmp_path):
    """The README's main command: the shipped mini model draws what the prompt says, offline."""
    cache = tmp_path / 'sdxl-cache'
    env = command_env(str(tmp_path / 'child'), MODELSCOPE_SDXL_CACHE=str(cache))
    out = tmp_path / 'default.png'
    result = subprocess.run([sys.executable, '-m', 'modelscope_sdxl', 'generate', PROMPT, '--seed', '0',
                             '--out', str(out)], env=env, cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{out}\n'
    # stderr is a pipe here, as in a log: the seed and no progress bars (their carriage returns are
    # noise in a log; tests/test_cli_habits.py sees them in a terminal), no libraries' log lines.
    assert result.stderr == 'seed: 0\n', result.stderr
    for noise in (' - modelscope - ', 'WARNING', 'INFO', 'Warning', 'warning', '[transformers]',
                  'Loading pipeline components', 'Loading weights', 'Writing model shards', 'Traceback'):
        assert noise not in result.stderr, result.stderr
    assert foreign_hosts(env) == []

    record = read_png_parameters(str(out))
    assert (record['model'], record['seed'], record['text']) == ('mini', 0, PROMPT)
    image = read_bgr(out)
    seen = read_image(image[:, :, ::-1])
    assert (seen.colour, seen.background) == ('red', 'blue')
    # The default model is the shipped one: nothing is built or downloaded.
    assert not cache.exists()
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=mini_model_dir(), device='cpu')
    assert np.array_equal(image, pipe(call_parameters(record))['output_imgs'][0])


def test_the_tiny_model_is_built_on_first_use(tmp_path, capsys, monkeypatch):
    cache = tmp_path / 'sdxl-cache'
    monkeypatch.setenv('MODELSCOPE_SDXL_CACHE', str(cache))
    out = tmp_path / 'tiny.png'
    code, stdout, _ = run_cli(['generate', PROMPT, '--model', 'tiny', '--seed', '11', '--steps', '4',
                               '--out', out], capsys)
    assert (code, stdout) == (0, f'{out}\n')
    record = read_png_parameters(str(out))
    assert (record['model'], record['seed']) == ('tiny', 11)
    base_dir = os.path.join(str(cache), 'tiny', 'base')
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=base_dir, device='cpu')
    assert np.array_equal(read_bgr(out), pipe(call_parameters(record))['output_imgs'][0])


def test_modelscope_sdxl_generate_from_the_hub_then_from_png_again(hub_server, hub_repos, hub, tmp_path, capsys):
    """The `modelscope` command's plugin, with its global --endpoint: the child's MODELSCOPE_ENDPOINT
    points at a closed port, so only --endpoint can reach the stand-in hub."""
    hub_server.start()
    env = command_env(str(tmp_path / 'child'))
    out = tmp_path / 'hub.png'
    start = len(hub_server.requests)
    result = subprocess.run(console_script('modelscope') + [
        '--endpoint', hub_server.endpoint, 'sdxl', 'generate', 'a dog', '--model', BASE_ID, '--revision', 'v1.0.0',
        '--seed', '4', '--steps', '4', '--out', str(out), '--quiet'],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{out}\n'
    # --quiet: only the `modelscope` command's own banner, no download bars or log lines.
    assert 'Downloading' not in result.stderr and '%|' not in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr and ' - modelscope - ' not in result.stderr, result.stderr
    assert foreign_hosts(env) == []
    fetched = set(hub_server.downloads())
    made = hub_server.requests[start:]
    assert {r for r in fetched if r[0] == BASE_ID} and all(r[1] == 'v1.0.0' for r in fetched)
    assert not {(BASE_ID, 'v1.0.0', decoy) for decoy in BASE_DECOYS} & fetched
    assert any(r[0] == REFINER_ID for r in fetched)
    assert made and not hub_server.unhandled()

    record = read_png_parameters(str(out))
    assert (record['model'], record['model_revision'], record['seed']) == (BASE_ID, 'v1.0.0', 4)
    base_dir, refiner_dir = hub_repos['local']['v1.0.0']
    local = pipeline(task=Tasks.text_to_image_synthesis, model=base_dir, refiner=refiner_dir, device='cpu')
    assert np.array_equal(read_bgr(out), local(call_parameters(record))['output_imgs'][0])

    # In this process, through the stand-in hub (the `hub` fixture's client settings): the same pixels.
    again = tmp_path / 'again.png'
    code, _, err = run_cli(['generate', '--from-png', out, '--out', again, '--quiet'], capsys)
    assert code == 0, err
    assert np.array_equal(read_bgr(again), read_bgr(out))
    assert read_png_parameters(str(again)) == record


def test_modelscope_sdxl_exits_2_on_a_bad_value_without_a_traceback(tmp_path):
    env = command_env(str(tmp_path / 'child'))
    result = subprocess.run(console_script('modelscope') + ['sdxl', 'generate', 'a dog', '--steps', '0',
                                                            '--out', str(tmp_path / 'x.png')],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    # The `modelscope` command prints its banner first; the error is the last line.
    assert result.stderr.rstrip().splitlines()[-1] == \
        'modelscope sdxl: error: num_inference_steps must be an integer >= 1 and <= 1000, got 0'
    assert result.stdout == '' and not (tmp_path / 'x.png').exists()
