"""`modelscope-sdxl webui`: the page in a real browser (Debian's chromium driven by Playwright), and
its /generate endpoint through gradio_client, on the shipped mini model.

One server, started as the command a person types, serves the browser tests; the Studio app
(examples/modelscope_studio/app.py) serves the gradio_client tests. Both listen on 127.0.0.1 only and
are stopped when the module ends. Set MODELSCOPE_SDXL_WEBUI_SCREENSHOT=docs/webui.png to write the
screenshot of docs/webui.md.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator, List

import numpy as np
import pytest
from PIL import Image

from modelscope_sdxl.mini.scenes import read_image
from modelscope_sdxl.parameters import PARAMS, PARAMS_BY_NAME
from modelscope_sdxl.cli.png import JSON_KEY, read_png_parameters
from modelscope_sdxl.cli.webui_app import COMMON, input_names, page_values_to_input
from subprocess_env import command_env, console_script, foreign_hosts, free_port, stop_process

CHROMIUM = '/usr/bin/chromium'
PROMPT = 'a red circle on a blue background'
OTHER_PROMPT = 'a big yellow square on a black background'
START_TIMEOUT = 120  # seconds for the server to load the model and listen
RUN_TIMEOUT = 60_000  # milliseconds the page may take to show a mini-model image
MAX_IMAGES = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Running:
    url: str
    process: subprocess.Popen
    env: dict
    log: str


def _start(argv: List[str], folder: str, **extra_env: str) -> Running:
    # Gradio's cache, where the page's PNG files wait, in the test's folder.
    env = command_env(folder, GRADIO_TEMP_DIR=os.path.join(folder, 'gradio'), **extra_env)
    log = os.path.join(folder, 'server.log')
    with open(log, 'wb') as out:
        process = subprocess.Popen(argv, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with open(log, encoding='utf-8', errors='replace') as f:
            found = re.search(r'serving on (http://127\.0\.0\.1:\d+)/', f.read())
        if found:
            return Running(found.group(1), process, env, log)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    stop_process(process)
    with open(log, encoding='utf-8', errors='replace') as f:
        raise AssertionError(f'the web page did not start within {START_TIMEOUT} s:\n{f.read()[-4000:]}')


def _check_stopped(running: Running) -> None:
    """The server ended on SIGTERM by closing itself: exit code 0, its PNG files removed."""
    assert running.process.returncode == 0, running.process.returncode
    cache = running.env['GRADIO_TEMP_DIR']
    assert os.path.isdir(cache)  # made when the server started
    assert [n for n in os.listdir(cache) if n.startswith('modelscope-sdxl-')] == []


@pytest.fixture(scope='module')
def webui(tmp_path_factory) -> Iterator[Running]:
    """`modelscope-sdxl webui` on the default (mini) model, on a free port of 127.0.0.1."""
    folder = str(tmp_path_factory.mktemp('webui'))
    running = _start(console_script('modelscope-sdxl') + [
        'webui', '--host', '127.0.0.1', '--port', str(free_port()), '--max-images-per-call', str(MAX_IMAGES)],
        folder)
    try:
        yield running
    finally:
        stop_process(running.process)
    with open(running.log, encoding='utf-8', errors='replace') as f:
        log = f.read()
    assert 'Traceback' not in log, log
    assert foreign_hosts(running.env) == []
    _check_stopped(running)


@pytest.fixture(scope='module')
def studio(tmp_path_factory) -> Iterator[Running]:
    """The Studio's app.py, its model named by the environment, as a Studio runs it."""
    folder = str(tmp_path_factory.mktemp('studio'))
    running = _start([sys.executable, os.path.join(REPO, 'examples', 'modelscope_studio', 'app.py')], folder,
                     MODELSCOPE_SDXL_MODEL='mini', MODELSCOPE_SDXL_MAX_IMAGES=str(MAX_IMAGES),
                     GRADIO_SERVER_NAME='127.0.0.1', GRADIO_SERVER_PORT=str(free_port()))
    try:
        yield running
    finally:
        stop_process(running.process)
    assert foreign_hosts(running.env) == []
    _check_stopped(running)


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f'{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)'
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, webui):
    context = browser.new_context(viewport={'width': 1280, 'height': 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(RUN_TIMEOUT)
    page.sent = []  # what the page sent to the queue, for failed assertions
    page.on('request', lambda r: page.sent.append(r.post_data) if 'queue/join' in r.url else None)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope='module')
def mini_pipe():
    """The mini model loaded here, to compare the page's images with a direct call."""
    from modelscope_sdxl.cli.sources import ModelSource

    return ModelSource('mini', device='cpu').build_pipeline()


def _open(page, url: str) -> float:
    """Load the page; seconds until Generate can be clicked."""
    started = time.perf_counter()
    page.goto(url)
    page.locator('#generate').wait_for(state='visible')
    page.wait_for_function("() => document.body.dataset.webuiReady === 'true'")
    page.wait_for_function("() => { const b = document.querySelector('#generate');"
                           " return b && !b.disabled; }")
    seconds = time.perf_counter() - started
    _settle(page)
    return seconds


def _set(page, elem_id: str, value: str) -> None:
    """Type into a text field, or a slider's number box."""
    box = page.locator(f'#{elem_id} input[type=number]')
    if not box.count():
        box = page.locator(f'#{elem_id} textarea, #{elem_id} input').first
    box.fill(value)
    box.blur()
    if page.locator(f'#{elem_id} input[type=range]').count():  # wait for the slider to take the value
        page.wait_for_function('([id, v]) => document.querySelector(`#${id} input[type=range]`).value === v',
                               arg=[elem_id, value])
    _settle(page)


def _settle(page) -> None:
    """Let the page's scripts take in what was typed (two animation frames) before the next click: on a
    busy machine a click can otherwise send the values the fields had before."""
    page.evaluate('() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))')


def _gallery_images(page, count: int) -> List[np.ndarray]:
    """The gallery's images as RGB arrays, fetched as the browser shows them."""
    images = page.locator('#gallery img')
    images.nth(count - 1).wait_for(state='visible')
    out = []
    for i in range(images.count()):
        src = images.nth(i).get_attribute('src')
        response = page.request.get(src)
        assert response.ok, src
        out.append(np.asarray(Image.open(io.BytesIO(response.body())).convert('RGB')))
    return out


def _colours(rgb: np.ndarray):
    seen = read_image(rgb)
    return seen.colour, seen.background


def _show(page) -> str:
    """What the page says (and sent), for a failed assertion."""
    return (f"status: {page.locator('#status').inner_text()!r}; "
            f"A1111: {page.locator('#a1111 textarea').input_value()!r}; sent: {getattr(page, 'sent', None)}")


def test_every_parameter_of_the_table_is_a_control_and_an_api_input():
    """The page and the API are generated from the table: nothing missing, nothing extra."""
    names = input_names()
    assert names[0] == 'text'
    assert sorted(names) == sorted(p.name for p in PARAMS)
    assert list(names[1:len(COMMON) + 1]) == list(COMMON)


@pytest.mark.parametrize('values, expected', [
    # empty fields and 'default' choices are left to the pipeline
    ({'text': 'x', 'negative_prompt': '', 'seed': '', 'scheduler': 'default', 'aspect_ratio': 'default',
      'original_size': ''}, {'text': 'x'}),
    # numbers typed in text fields; sizes as 'a, b'
    ({'text': 'x', 'seed': '42', 'height': '128', 'original_size': '256, 512', 'target_size': '[64, 32]'},
     {'text': 'x', 'seed': 42, 'height': 128, 'original_size': [256, 512], 'target_size': [64, 32]}),
    # text that is not a number goes on unchanged, for the table's check to name the field
    ({'text': 'x', 'seed': 'abc', 'original_size': 'big'}, {'text': 'x', 'seed': 'abc', 'original_size': 'big'}),
    # untouched controls of the other refiner mode are left out; a changed one is kept (and refused)
    ({'text': 'x', 'refiner_mode': 'sdedit', 'high_noise_frac': 0.8, 'strength': 0.5},
     {'text': 'x', 'refiner_mode': 'sdedit', 'strength': 0.5}),
    ({'text': 'x', 'refiner_mode': 'none', 'high_noise_frac': 0.5, 'strength': 0.3, 'aesthetic_score': 6.0},
     {'text': 'x', 'refiner_mode': 'none', 'high_noise_frac': 0.5}),
])
def test_page_values_become_the_pipeline_input(values, expected):
    assert page_values_to_input(values, has_refiner=True) == expected


def test_a_bad_typed_value_gets_the_tables_message(mini_pipe):
    for values, message in (({'text': 'x', 'seed': 'abc'}, "seed must be an integer >= 0"),
                            ({'text': 'x', 'original_size': 'big'}, 'original_size must be a pair of integers'),
                            ({'text': 'x', 'refiner_mode': 'none', 'high_noise_frac': 0.5},
                             "high_noise_frac applies only to refiner_mode='ensemble'")):
        with pytest.raises((TypeError, ValueError), match=re.escape(message)):
            mini_pipe(page_values_to_input(values, has_refiner=True))


def test_the_command_and_the_modelscope_plugin_have_webui(tmp_path, capsys):
    flags = ('--host', '--port', '--model', '--revision', '--refiner', '--device', '--max-images-per-call')
    env = command_env(str(tmp_path / 'child'))
    result = subprocess.run(console_script('modelscope-sdxl') + ['webui', '--help'], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(flag in result.stdout for flag in flags), result.stdout
    result = subprocess.run(console_script('modelscope-sdxl') + ['webui', '--port', '0'], env=env,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (
        2, 'modelscope-sdxl: error: --port must be between 1 and 65535, got 0\n')

    # Parsing a command line (and so `modelscope`'s plugin) does not import Gradio.
    result = subprocess.run([sys.executable, '-c', 'import sys; from modelscope_sdxl import cli; cli.build_parser(); '
                             "print('gradio' in sys.modules)"], env=env, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, 'False\n'), result.stderr

    # Without Gradio (the [webui] extra), the command says what to install.
    blocked = tmp_path / 'no-gradio' / 'gradio'
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text("raise ImportError('gradio is not installed')\n")
    result = subprocess.run(console_script('modelscope-sdxl') + ['webui'], capture_output=True, text=True,
                            timeout=120, env=dict(env, PYTHONPATH=os.pathsep.join([str(blocked.parent),
                                                                                   env['PYTHONPATH']])))
    assert (result.returncode, result.stderr) == (
        2, "modelscope-sdxl: error: the web page needs Gradio: pip install 'modelscope-sdxl[webui]'\n")

    # `modelscope sdxl webui`: the plugin registers the same subcommands.
    from modelscope_sdxl.cli.plugin import SDXLCommand

    host = argparse.ArgumentParser(prog='modelscope')
    SDXLCommand.register(host.add_subparsers(dest='command'))
    with pytest.raises(SystemExit):
        host.parse_args(['sdxl', 'webui', '--help'])
    out = capsys.readouterr().out
    assert out.startswith('usage: modelscope sdxl webui') and all(flag in out for flag in flags), out
    args = host.parse_args(['sdxl', 'webui', '--port', '70000'])
    with pytest.raises(SystemExit) as exit_info:
        args._command(args).execute()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == 'modelscope sdxl: error: --port must be between 1 and 65535, got 70000\n'


# ---------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------
def test_type_a_prompt_click_generate_and_download_the_png(page, webui, mini_pipe, tmp_path):
    seconds = _open(page, webui.url)
    # The budget is 2 s on this 2-core machine; the bound leaves room for a machine busy with other work.
    assert seconds < 4, f'the page took {seconds:.2f} s to become interactive'
    _set(page, 'prompt', PROMPT)
    _set(page, 'seed', '7')
    page.get_by_role('button', name='Generate').click()
    [shown] = _gallery_images(page, 1)
    assert _colours(shown) == ('red', 'blue'), _show(page)
    centre, corner = shown[shown.shape[0] // 2, shown.shape[1] // 2], shown[1, 1]
    assert centre[0] > 150 > centre[2] and corner[2] > 150 > corner[0], (centre, corner)
    assert re.fullmatch(r'Seed 7 · 1 image in \d+\.\d\d s', page.locator('#status').inner_text().strip())
    a1111 = page.locator('#a1111 textarea').input_value()
    assert a1111.startswith(PROMPT + '\nSteps: 30, Sampler: Euler, CFG scale: 5.0, Seed: 7, Size: 64x64'), a1111

    with page.expect_download() as download:
        page.locator('#files a').first.click()
    saved = tmp_path / 'downloaded.png'
    download.value.save_as(saved)
    record = read_png_parameters(str(saved))
    assert (record['text'], record['seed'], record['model'], record['num_inference_steps']) == (PROMPT, 7, 'mini', 30)
    # The same pixels as a direct call, and the same bytes as `modelscope-sdxl generate` writes.
    direct = mini_pipe({'text': PROMPT, 'seed': 7})
    assert np.array_equal(np.asarray(Image.open(saved).convert('RGB')), direct['output_imgs'][0][:, :, ::-1])
    assert np.array_equal(shown, direct['output_imgs'][0][:, :, ::-1])
    from modelscope_sdxl.cli import main

    assert main(['generate', PROMPT, '--seed', '7', '--quiet', '--out', str(tmp_path / 'cli.png')]) == 0
    assert saved.read_bytes() == (tmp_path / 'cli.png').read_bytes()

    page.evaluate('window.scrollTo(0, 0)')
    _settle(page)
    page.screenshot(path=str(tmp_path / 'webui.png'))
    assert Image.open(tmp_path / 'webui.png').size == (1280, 900)
    if os.environ.get('MODELSCOPE_SDXL_WEBUI_SCREENSHOT'):
        shutil.copyfile(tmp_path / 'webui.png', os.environ['MODELSCOPE_SDXL_WEBUI_SCREENSHOT'])

    # "Last seed" puts the seed back; "Random" empties the field, and the next image gets a new seed.
    page.get_by_role('button', name='Random').click()
    page.wait_for_function("() => document.querySelector('#seed input, #seed textarea').value === ''")
    page.get_by_role('button', name='Last seed').click()
    page.wait_for_function("() => document.querySelector('#seed input, #seed textarea').value === '7'")


def test_stop_mid_run_then_generate_again(page, webui):
    _open(page, webui.url)
    _set(page, 'prompt', PROMPT)
    _set(page, 'num_inference_steps', '1000')  # seconds of work with the mini model
    page.get_by_role('button', name='Generate').click()
    # Progress per stage, from the pipeline's callback.
    page.get_by_text(re.compile(r'base stage')).first.wait_for(state='visible')
    started = time.perf_counter()
    page.get_by_role('button', name='Stop').click()
    status = page.locator('#status')
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Stopped')")
    assert status.inner_text().startswith('Stopped: cancelled by the callback during the base stage'), \
        status.inner_text()
    assert time.perf_counter() - started < 10
    assert page.locator('#gallery img').count() == 0

    _set(page, 'num_inference_steps', '30')
    page.get_by_role('button', name='Generate').click()
    [shown] = _gallery_images(page, 1)
    assert _colours(shown) == ('red', 'blue'), _show(page)


def test_the_page_shows_the_controls_of_the_chosen_refiner_mode(page, webui):
    _open(page, webui.url)
    visible = {n: page.locator(f'#{n}') for n in ('high_noise_frac', 'strength')}
    assert visible['high_noise_frac'].is_visible() and not visible['strength'].is_visible()
    page.locator('#refiner_mode input').click()
    page.get_by_role('option', name='sdedit').click()
    visible['strength'].wait_for(state='visible')
    visible['high_noise_frac'].wait_for(state='hidden')


def test_a_bad_value_shows_the_message_naming_the_field(page, webui):
    _open(page, webui.url)
    _set(page, 'prompt', PROMPT)
    _set(page, 'height', '100')
    page.get_by_role('button', name='Generate').click()
    message = page.get_by_text('height must be a multiple of 8 between 8 and 4096, got 100')
    try:
        message.first.wait_for(state='visible')
    except Exception:
        raise AssertionError(_show(page))
    assert 'Traceback' not in page.content()
    assert page.locator('#gallery img').count() == 0


def test_two_pages_at_once_each_get_their_own_images(browser, webui, mini_pipe):
    jobs = ((PROMPT, '8', ('red', 'blue')), (OTHER_PROMPT, '9', ('yellow', 'black')))
    contexts = [browser.new_context(viewport={'width': 1280, 'height': 900}) for _ in jobs]
    try:
        pages = [c.new_page() for c in contexts]
        for page, (prompt, seed, _) in zip(pages, jobs):
            page.set_default_timeout(RUN_TIMEOUT)
            page.sent = []
            page.on('request', lambda r, page=page: page.sent.append(r.post_data) if 'queue/join' in r.url else None)
            _open(page, webui.url)
            _set(page, 'prompt', prompt)
            _set(page, 'seed', seed)
            _set(page, 'num_inference_steps', '60')  # long enough for the runs to overlap in the queue
        for page in pages:
            page.get_by_role('button', name='Generate').click()
        for page, (prompt, seed, colours) in zip(pages, jobs):
            [shown] = _gallery_images(page, 1)
            assert _colours(shown) == colours, _show(page)
            direct = mini_pipe({'text': prompt, 'seed': int(seed), 'num_inference_steps': 60})
            assert np.array_equal(shown, direct['output_imgs'][0][:, :, ::-1]), _show(page)
            assert page.locator('#a1111 textarea').input_value().startswith(prompt + '\n')
    finally:
        for context in contexts:
            context.close()


# ---------------------------------------------------------------------------------------------
# The API, through gradio_client, on the Studio's app.py
# ---------------------------------------------------------------------------------------------
def test_gradio_client_generate(studio, mini_pipe, tmp_path):
    from gradio_client import Client

    client = Client(studio.url + '/', verbose=False, download_files=str(tmp_path))
    info = client.view_api(print_info=False, return_format='dict')['named_endpoints']['/generate']
    params = info['parameters']
    assert [p['parameter_name'] for p in params] == input_names()
    assert not params[0]['parameter_has_default']
    assert all(p['parameter_has_default'] for p in params[1:])
    assert {p['parameter_name']: p['parameter_default'] for p in params}['num_inference_steps'] == \
        PARAMS_BY_NAME['num_inference_steps'].default

    # A picture to start from is an upload (here through the client), never a path on the server.
    from gradio_client import handle_file

    picture = tmp_path / 'picture.png'
    Image.fromarray(mini_pipe({'text': 'a blue square on a white background', 'seed': 3})['output_imgs'][0][:, :, ::-1]
                    ).save(picture)
    uploader = Client(studio.url + '/', verbose=False, download_files=str(tmp_path))  # a client of its own
    _, _, record, files, _ = uploader.predict(PROMPT, image=handle_file(str(picture)), denoising_strength=0.6,
                                              refiner_mode='none', seed=4, api_name='/generate')
    assert (record['denoising_strength'], record['refiner_mode'], record['seed']) == (0.6, 'none', 4)
    direct = mini_pipe({'text': PROMPT, 'image': Image.open(picture), 'denoising_strength': 0.6,
                        'refiner_mode': 'none', 'seed': 4})
    with Image.open(files[0]) as img:
        assert np.array_equal(np.asarray(img.convert('RGB')), direct['output_imgs'][0][:, :, ::-1])

    gallery, a1111, record, files, status = client.predict(
        PROMPT, seed=5, num_images_per_prompt=2, api_name='/generate')
    assert len(gallery) == len(files) == 2
    assert (record['seed'], record['num_images_per_prompt'], record['model']) == (5, 2, 'mini')
    assert a1111.startswith(PROMPT + '\n') and 'Seed: 5' in a1111
    assert status.startswith('Seed 5 · 2 images in ')
    direct = mini_pipe({'text': PROMPT, 'seed': 5, 'num_images_per_prompt': 2})
    for i, (item, path, expected) in enumerate(zip(gallery, files, direct['output_imgs'])):
        assert item['caption'].startswith(f'seed {5 + i}')  # image i has its own seed
        for image_path in (item['image'], path):
            with Image.open(image_path) as img:
                assert JSON_KEY in img.text
                assert np.array_equal(np.asarray(img.convert('RGB')), expected[:, :, ::-1])
        # Each PNG carries its own image's parameters, as the command line's do.
        assert read_png_parameters(path) == {**record, 'seed': 5 + i, 'num_images_per_prompt': 1}

    # Progress per stage while it runs; /stop stops this client's run through the pipeline's callback.
    job = client.submit(PROMPT, num_inference_steps=1000, api_name='/generate')
    stages = set()
    deadline = time.monotonic() + 60
    while 'base stage' not in stages and time.monotonic() < deadline and not job.done():
        stages.update(unit.desc for unit in job.status().progress_data or [])
        time.sleep(0.05)
    assert 'base stage' in stages, stages
    assert client.predict(api_name='/stop') == ()
    gallery, a1111, record, files, status = job.result(timeout=30)
    assert (gallery, files) == ([], [])
    assert status.startswith('Stopped: cancelled by the callback during the base stage'), status

    from gradio_client.exceptions import AppError

    for kwargs, message in (({'num_images_per_prompt': MAX_IMAGES + 1},
                             f'num_images_per_prompt must be <= {MAX_IMAGES} (max_images_per_call of this pipeline), '
                             f'got {MAX_IMAGES + 1}'),
                            ({'num_inference_steps': 5000}, 'num_inference_steps must be an integer >= 1 and <= 1000, '
                                                            'got 5000'),
                            ({'aspect_ratio': '16:9', 'height': '64'},
                             'aspect_ratio cannot be combined with height or width')):
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(PROMPT, api_name='/generate', **kwargs)
