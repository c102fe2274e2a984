"""`modelscope-sdxl batch`: a JSONL file into PNG files and a manifest, here and on Ray, resumably."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray  # an import error fails this module: the Ray path is tested, never skipped
from PIL import Image

from modelscope_sdxl import cli
from modelscope_sdxl.cli import files
from modelscope_sdxl.cli.batch import MANIFEST, BatchError, read_items, run_batch
from modelscope_sdxl.cli.png import read_png_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Generated lines (one without a seed), then lines the batch must refuse without stopping.
LINES = [
    '{"id": "red", "text": "a red circle", "seed": 1, "num_inference_steps": 4}',
    '{"text": "a blue square", "seed": 2, "num_inference_steps": 4, "num_images_per_prompt": 2}',
    '',
    '{"id": "bird", "text": "a bird", "guidance_scale": "high"}',
    '{"id": "sdedit", "text": "a dog", "seed": 3, "num_inference_steps": 6, "refiner_mode": "sdedit", '
    '"strength": 0.5}',
    '{"text": "a sun",',
    '{"id": "base only", "text": "a cat", "seed": 4, "num_inference_steps": 3, "refiner_mode": "none", '
    '"height": 48, "width": 80}',
    '"just a prompt"',
    '{"id": 7, "text": "a green tree", "num_inference_steps": 4}',
    '{"id": "red", "text": "another red circle"}',
    '{"text": "a moon", "colour": "red"}',
]
GENERATED = 5  # lines that make images
ERRORS = {  # line -> (status, start of the recorded error)
    4: ('invalid', 'TypeError: guidance_scale must be a number'),
    6: ('invalid', 'invalid JSON: '),
    8: ('invalid', 'a line must be a JSON object such as {"text": "a dog"}, got str'),
    10: ('invalid', "id 'red' is already used on line 1"),
    11: ('invalid', "ValueError: unknown parameter(s) 'colour'"),
}


@pytest.fixture(scope='module')
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp('batch-input') / 'prompts.jsonl'
    path.write_text('\n'.join(LINES) + '\n', encoding='utf-8')
    return str(path)


@pytest.fixture(scope='module')
def local_run(prompts, sdxl_pipe, tmp_path_factory):
    """The whole file run here, in this process: the reference the other runs must equal."""
    out = str(tmp_path_factory.mktemp('batch-local'))
    logged = []
    result = run_batch(prompts, out, pipe=sdxl_pipe, log=logged.append)
    return out, result, logged


@pytest.fixture(scope='module')
def ray_instance():
    """One small local Ray instance for the module (starting Ray is slow)."""
    ray.init(address='local', num_cpus=2, object_store_memory=200 * 1024 ** 2, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def manifest_records(out):
    with open(os.path.join(out, MANIFEST), encoding='utf-8') as f:
        text = f.read()
    assert text.endswith('\n')
    return [json.loads(line) for line in text.splitlines()]


def comparable(records):
    """Records without their times, and without the drawn seed of lines that gave none."""
    result = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in ('time', 'seconds')}
        if r['status'] == 'ok' and 'seed' not in r['input']:
            assert isinstance(r.pop('seed'), int) and isinstance(r.pop('seeds')[0], int)
            r['parameters'] = {k: v for k, v in r['parameters'].items() if k != 'seed'}
        result.append(r)
    return result


def read_rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert('RGB')).astype(int)


def leftover_temporary_files(out):
    return [f for f in os.listdir(out) if f.startswith('.tmp-')]


def assert_same_run(out, reference, model, tolerance=2):
    """Same manifest (modulo time and drawn seeds), same images for the same seeds, nothing else on disk;
    every PNG holds its parameters and names `model`."""
    records, expected = manifest_records(out), manifest_records(reference)
    assert [r['id'] for r in records] == [r['id'] for r in expected]
    assert len({r['id'] for r in records}) == len(records)  # every item exactly once
    assert comparable(records) == comparable(expected)
    files = []
    for record, ref in zip(records, expected):
        for k, (name, ref_name) in enumerate(zip(record.get('files', []), ref.get('files', []))):
            assert read_png_parameters(os.path.join(out, name)) == {
                **record['parameters'], 'seed': record['seeds'][k], 'num_images_per_prompt': 1, 'model': model}
            if 'seed' in record['input']:
                diff = np.abs(read_rgb(os.path.join(out, name)) - read_rgb(os.path.join(reference, ref_name)))
                assert diff.max() <= tolerance, (name, int(diff.max()))
        files += record.get('files', [])
    assert sorted(os.listdir(out)) == sorted(files + [MANIFEST])


def test_a_local_run_writes_pngs_with_their_parameters_and_a_manifest(local_run, sdxl_pipe):
    out, result, logged = local_run
    records = manifest_records(out)
    assert (result.items, result.ok, result.invalid, result.failed) == (len(records), GENERATED, 5, 0)
    assert not result.complete and result.recorded == len(records) and result.skipped == 0
    # One record per non-blank line, in file order (line 3 is blank).
    assert [r['line'] for r in records] == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    by_line = {r['line']: r for r in records}
    red, square, sdedit, cat, tree = (by_line[n] for n in (1, 2, 5, 7, 9))
    assert red['id'] == 'red' and red['files'] == ['red-1.png'] and red['seed'] == 1
    assert red['input'] == {'text': 'a red circle', 'seed': 1, 'num_inference_steps': 4}
    assert len(square['id']) == 16 and square['files'] == [f"{square['id']}-1.png", f"{square['id']}-2.png"]
    assert cat['id'] == 'base only' and cat['files'][0].startswith('base_only-') and cat['parameters']['width'] == 80
    assert tree['id'] == '7' and tree['files'] == ['7-1.png']
    assert sdedit['parameters']['refiner_mode'] == 'sdedit' and sdedit['parameters']['strength'] == 0.5
    for record in (red, square, sdedit, cat, tree):
        assert record['status'] == 'ok' and record['parameters']['seed'] == record['seed']
        images = record['parameters']['num_images_per_prompt']
        assert record['seeds'] == [record['seed'] + k for k in range(images)] == \
            [read_png_parameters(os.path.join(out, name))['seed'] for name in record['files']]
        assert record['time'].endswith('+00:00') and record['seconds'] > 0
        # The call's parameters make the same pixels again...
        again = sdxl_pipe(record['parameters'])
        for name, image in zip(record['files'], again['output_imgs']):
            assert (read_rgb(os.path.join(out, name)) == image[:, :, ::-1]).all()
        # ... and each PNG carries its own image's exact parameters, which make that image alone.
        for k, name in enumerate(record['files']):
            expected = {**record['parameters'], 'seed': record['seeds'][k], 'num_images_per_prompt': 1}
            assert read_png_parameters(os.path.join(out, name)) == expected
            alone = sdxl_pipe(expected)['output_imgs'][0][:, :, ::-1].astype(int)
            assert np.abs(read_rgb(os.path.join(out, name)).astype(int) - alone).max() <= (2 if images > 1 else 0)
    # The line without a seed: the drawn seed is recorded and remakes the image.
    assert 'seed' not in tree['input'] and isinstance(tree['seed'], int)
    assert any(line.startswith('[') and ': 7-1.png (seed ' in line for line in logged)


def test_bad_lines_are_recorded_with_their_error_and_do_not_stop_the_others(local_run):
    out, _, _ = local_run
    by_line = {r['line']: r for r in manifest_records(out)}
    for line, (status, error) in ERRORS.items():
        record = by_line[line]
        assert record['status'] == status and record['error'].startswith(error), record
        assert 'files' not in record and 'seed' not in record
    assert by_line[6]['raw'] == '{"text": "a sun",' and 'input' not in by_line[6]
    assert by_line[8]['raw'] == '"just a prompt"'
    assert by_line[4]['input'] == {'text': 'a bird', 'guidance_scale': 'high'} and by_line[4]['id'] == 'bird'
    # The duplicate id is refused; its line gets an id of its own, so the first 'red' stands.
    assert by_line[10]['id'] != 'red' and by_line[1]['id'] == 'red'


def test_rerunning_a_finished_batch_skips_everything_without_loading_a_model(local_run, prompts):
    out, _, _ = local_run
    before = open(os.path.join(out, MANIFEST), encoding='utf-8').read()
    stamps = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f.endswith('.png')}
    # A model that does not exist: nothing is left to make, so nothing is loaded.
    result = run_batch(prompts, out, model=os.path.join(out, 'no-such-model'), log=lambda _: None)
    assert (result.recorded, result.skipped, result.ok, result.invalid) == (0, 10, GENERATED, 5)
    assert open(os.path.join(out, MANIFEST), encoding='utf-8').read() == before
    assert stamps == {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in stamps}


def test_ray_run_makes_the_same_images_and_manifest(local_run, prompts, tiny_sdxl, ray_instance, tmp_path):
    reference, expected, _ = local_run
    out = str(tmp_path / 'ray')
    logged = []
    result = run_batch(prompts, out, model=tiny_sdxl[0], ray_address='auto', workers=2, log=logged.append)
    assert (result.ok, result.invalid, result.failed, result.recorded) == (GENERATED, 5, 0, 10)
    assert any(line.startswith('ray: 2 worker(s), each 1 CPU and 0 GPU, device cpu') for line in logged)
    assert_same_run(out, reference, tiny_sdxl[0])


def test_an_interrupted_ray_run_resumes_with_every_item_once(local_run, prompts, tiny_sdxl, ray_instance,
                                                             tmp_path):
    reference, _, _ = local_run
    out = str(tmp_path / 'ray-resumed')
    made = []

    class Interrupted(Exception):
        pass

    def stop_after_two_images(record):
        if record['status'] == 'ok':
            made.append(record['id'])
            if len(made) == 2:
                raise Interrupted

    with pytest.raises(Interrupted):
        run_batch(prompts, out, model=tiny_sdxl[0], ray_address='auto', workers=2,
                  on_record=stop_after_two_images, log=lambda _: None)
    records = manifest_records(out)
    assert sorted(r['id'] for r in records if r['status'] == 'ok') == sorted(made)
    assert not leftover_temporary_files(out)
    assert sorted(f for f in os.listdir(out) if f.endswith('.png')) == \
        sorted(f for r in records for f in r.get('files', []))
    # Stopping the run stopped its workers: the instance's CPUs are free for the next run.
    deadline = time.monotonic() + 30
    while ray.available_resources().get('CPU', 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get('CPU', 0) == 2

    result = run_batch(prompts, out, model=tiny_sdxl[0], ray_address='auto', workers=2, log=lambda _: None)
    assert result.skipped == len(records) - sum(r['status'] == 'failed' for r in records)
    assert result.recorded == 10 - result.skipped and result.ok == GENERATED
    assert_same_run(out, reference, tiny_sdxl[0])


def test_a_killed_command_resumes_with_every_item_once_and_no_temporary_files(local_run, prompts, tiny_sdxl,
                                                                                tmp_path):
    reference, _, _ = local_run
    out = str(tmp_path / 'killed')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    command = [sys.executable, '-m', 'modelscope_sdxl', 'batch', prompts, '--out', out, '--model', tiny_sdxl[0],
               '--device', 'cpu']
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = os.path.join(out, MANIFEST)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(manifest) and '"status": "ok"' in open(manifest, encoding='utf-8').read():
                break
            time.sleep(0.02)
        assert proc.poll() is None, 'the run ended before it could be killed'
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    records = manifest_records(out)
    made = [r for r in records if r['status'] == 'ok']
    assert 1 <= len(made) < GENERATED
    # What a kill during a write leaves behind: a torn manifest line and a temporary file.
    with open(manifest, 'a', encoding='utf-8') as f:
        f.write('{"id": "sdedit", "line": 5, "status": "o')
    open(os.path.join(out, '.tmp-interrupted.png'), 'wb').write(b'\x89PNG\r\n')

    # Resume with the same command, checking that the run here never imports Ray.
    code = ('import sys; from modelscope_sdxl.cli import main; rc = main(sys.argv[1:]); '
            "assert 'ray' not in sys.modules, 'the local path imported ray'; sys.exit(rc)")
    done = subprocess.run([sys.executable, '-c', code] + command[3:], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr  # 1: some lines are invalid
    assert 'removed 1 temporary file(s) left by an interrupted run' in done.stderr
    assert f'{len(records)} of 10 item(s) already recorded by an earlier run' in done.stderr
    assert_same_run(out, reference, tiny_sdxl[0])


def test_a_changed_line_is_made_again_and_its_old_files_removed(sdxl_pipe, tmp_path):
    prompts, out = tmp_path / 'p.jsonl', str(tmp_path / 'out')
    prompts.write_text('{"id": "a", "text": "a dog", "seed": 5, "num_inference_steps": 4, '
                       '"num_images_per_prompt": 2}\n{"id": "b", "text": "a cat", "seed": 6, '
                       '"num_inference_steps": 4}\n')
    run_batch(str(prompts), out, pipe=sdxl_pipe, log=lambda _: None)
    assert sorted(os.listdir(out)) == ['a-1.png', 'a-2.png', 'b-1.png', MANIFEST]
    prompts.write_text('{"id": "a", "text": "a dog", "seed": 9, "num_inference_steps": 4}\n'
                       '{"id": "b", "text": "a cat", "seed": 6, "num_inference_steps": 4}\n')
    result = run_batch(str(prompts), out, pipe=sdxl_pipe, log=lambda _: None)
    assert (result.recorded, result.skipped, result.ok) == (1, 1, 2)
    assert sorted(os.listdir(out)) == ['a-1.png', 'b-1.png', MANIFEST]
    records = manifest_records(out)
    assert [(r['id'], r['seed']) for r in records] == [('a', 9), ('b', 6)]
    expected = sdxl_pipe({'text': 'a dog', 'seed': 9, 'num_inference_steps': 4})['output_imgs'][0]
    assert (read_rgb(os.path.join(out, 'a-1.png')) == expected[:, :, ::-1]).all()
    # A file deleted by hand is made again; a line removed from the input leaves the manifest with its
    # images kept (they are still in the folder).
    os.unlink(os.path.join(out, 'b-1.png'))
    prompts.write_text('{"id": "b", "text": "a cat", "seed": 6, "num_inference_steps": 4}\n')
    result = run_batch(str(prompts), out, pipe=sdxl_pipe, log=lambda _: None)
    assert (result.recorded, result.ok) == (1, 1)
    assert [r['id'] for r in manifest_records(out)] == ['b', 'a']


def test_derived_ids_follow_the_content_not_the_position(tmp_path):
    first, second = tmp_path / 'one.jsonl', tmp_path / 'two.jsonl'
    first.write_text('{"text": "a dog", "seed": 1}\n{"text": "a cat"}\n{"text": "a cat"}\n'
                     '{"id": "x/y z", "text": "a"}\n{"id": "", "text": "b"}\n{"id": true, "text": "c"}\n')
    # Other key order and spacing, another line in front: the same content keeps its id.
    second.write_text('{"text": "a fish"}\n{"seed": 1, "text": "a dog"}\n\n{"text":"a cat"}\n')
    one, two = read_items(str(first)), read_items(str(second))
    assert one[0].id == two[1].id and len(one[0].id) == 16 and two[1].line == 2
    assert one[1].id == two[2].id and one[2].id == one[1].id + '-2'
    assert one[3].id == 'x/y z' and one[3].name.startswith('x_y_z-') and '/' not in one[3].name
    assert one[4].error.startswith("id must be 1 to 200 characters") and one[4].name is None
    assert one[5].error == 'id must be a string or an integer, got bool True'
    assert len({item.id for item in one}) == len(one)


def test_two_runs_cannot_write_to_one_folder(tmp_path):
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a dog"}\n')
    out = str(tmp_path / 'out')
    os.makedirs(out)
    with files.flock(out, busy=BatchError('held')):
        with pytest.raises(BatchError, match='another batch run is writing to'):
            run_batch(str(prompts), out, log=lambda _: None)


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a dog"}\n')
    monkeypatch.setitem(sys.modules, 'ray', None)  # `import ray` now fails as if it were missing
    monkeypatch.setitem(sys.modules, 'ray.data', None)
    with pytest.raises(BatchError, match=r"--ray needs Ray.*pip install 'modelscope-sdxl\[ray\]'"):
        run_batch(str(prompts), str(tmp_path / 'out'), ray_address='local')
    assert cli.main(['batch', str(prompts), '--out', str(tmp_path / 'out'), '--ray', 'auto']) == 2
    assert "pip install 'modelscope-sdxl[ray]'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'out')  # refused before touching anything


def test_without_a_model_the_batch_draws_with_the_mini_model(tmp_path):
    from modelscope_sdxl.mini.scenes import read_image

    wanted = {'red-on-blue': ('red', 'blue'), 'yellow-on-black': ('yellow', 'black')}
    path = tmp_path / 'shapes.jsonl'
    path.write_text(''.join(json.dumps({'id': key, 'text': f'a {fg} circle on a {bg} background', 'seed': 5}) + '\n'
                            for key, (fg, bg) in wanted.items()), encoding='utf-8')
    out = str(tmp_path / 'out')
    run_batch(str(path), out, log=lambda _: None)
    records = manifest_records(out)
    assert [(r['id'], r['status']) for r in records] == [(key, 'ok') for key in wanted]
    for record in records:
        (name,) = record['files']
        png = os.path.join(out, name)
        assert read_png_parameters(png)['model'] == 'mini'
        seen = read_image(np.asarray(Image.open(png).convert('RGB')))
        assert (seen.colour, seen.background) == wanted[record['id']]
    # The PNG names its model, so `generate --from-png` makes the same pixels again.
    again = str(tmp_path / 'again.png')
    assert cli.main(['generate', '--from-png', png, '--out', again, '--quiet']) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(png)))
