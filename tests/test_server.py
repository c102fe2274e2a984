"""``modelscope server`` serving a hub repo that carries this package's configuration.json.

The server runs as a real subprocess (``modelscope server --model_id ... --revision ...``) against the
stand-in hub on 127.0.0.1. Nothing imports ``modelscope_sdxl`` in it and nothing passes
``trust_remote_code``: the ``modelscope`` command loads this package's plugin (entry point group
``modelscope_hub.cli_plugins``), which makes ModelScope find the model and pipeline by name. Every
image is compared with a direct pipeline call on the same revision's folders and the same seed.
"""
import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import requests

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.parameters import PARAMS, bucket_for_aspect_ratio

from hub_fixtures import hub_repos, hub_server  # noqa: F401  (fixtures)
from hub_stub import _REPO_PATH, BASE_DECOYS, BASE_ID, REFINER_ID
from subprocess_env import command_env, console_script, foreign_hosts, free_port, stop_process

REVISION = 'v1.0.0'
START_TIMEOUT = 240  # seconds for the server to download the model and build the pipeline
CALL_TIMEOUT = 120
# Pixels may differ by this much from the direct call (the server runs in another process).
TOLERANCE = 2


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    env: Dict[str, str]
    log: str
    first_request: int  # index of the stand-in hub's first request made for this server

    def output(self) -> str:
        with open(self.log, encoding='utf-8', errors='replace') as f:
            return f.read()

    def call(self, body: Dict[str, Any]) -> requests.Response:
        assert self.process.poll() is None, 'the server has exited:\n' + self.output()[-5000:]
        return requests.post(self.url + '/call', json=body, timeout=CALL_TIMEOUT)


@pytest.fixture(scope='module')
def server(hub_server, tmp_path_factory):
    """`modelscope server` for test-owner/sdxl-tiny-base at v1.0.0, on a free port of 127.0.0.1."""
    hub_server.start()
    folder = str(tmp_path_factory.mktemp('modelscope-server'))
    env = command_env(folder, hub_server.endpoint)
    port = free_port()
    log = os.path.join(folder, 'server.log')
    first_request = len(hub_server.requests)
    with open(log, 'wb') as out:
        process = subprocess.Popen(
            console_script('modelscope') + ['server', '--model_id', BASE_ID, '--revision', REVISION,
                                            '--host', '127.0.0.1', '--port', str(port)],
            env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    running = Server(f'http://127.0.0.1:{port}', process, env, log, first_request)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f'modelscope server exited with {process.returncode}:\n{running.output()[-5000:]}')
            if time.monotonic() > deadline:
                pytest.fail(f'modelscope server did not answer within {START_TIMEOUT} s:\n{running.output()[-5000:]}')
            try:
                # Uvicorn answers once the startup handler (download, pipeline build) has finished.
                if requests.get(running.url + '/health', timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield running
    finally:
        stop_process(process)


@pytest.fixture(scope='module')
def direct(hub_repos):
    """Our pipeline on v1.0.0's folders, loaded locally: what the server must reproduce."""
    base_dir, refiner_dir = hub_repos['local'][REVISION]
    return pipeline(task=Tasks.text_to_image_synthesis, model=base_dir, refiner=refiner_dir, device='cpu')


def downloads_since(stub, first: int) -> List[tuple]:
    """(repo id, revision, file) of every file the stand-in hub served from request `first` on."""
    found = []
    for r in list(stub.requests)[first:]:
        m = _REPO_PATH.match(r.path)
        if r.method == 'GET' and r.status in (200, 206) and m and m.group(3) == '/repo':
            found.append((f'{m.group(1)}/{m.group(2)}', r.query.get('Revision', ''), r.query.get('FilePath', '')))
    return found


def decode(response: requests.Response) -> List[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(base64.b64decode(item), np.uint8), cv2.IMREAD_COLOR)
            for item in response.json()['output_imgs']]


def assert_same_images(served: List[np.ndarray], expected: List[np.ndarray]) -> None:
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= TOLERANCE


def assert_served_like_direct(server: Server, direct, text: str, parameters: Dict[str, Any]) -> Dict[str, Any]:
    response = server.call({'input': {'text': text}, 'parameters': parameters})
    assert response.status_code == 200, response.text[-3000:]
    body = response.json()
    expected = direct({'text': text, **parameters})
    assert_same_images(decode(response), expected['output_imgs'])
    assert body['seed'] == expected['seed']
    assert body['parameters'] == json.loads(json.dumps(expected['parameters']))
    return body


# ---------------------------------------------------------------------------------------------
def test_the_server_serves_the_hub_repo_with_this_packages_pipeline(server, direct, hub_server):
    body = assert_served_like_direct(server, direct, 'a red circle on a blue background',
                                     {'seed': 7, 'num_inference_steps': 4})
    assert body['seed'] == 7 and body['parameters']['refiner_mode'] == 'ensemble'

    # The base and the refiner named by its configuration.json, both at v1.0.0, from the stand-in hub.
    downloads = downloads_since(hub_server, server.first_request)
    assert (BASE_ID, REVISION, 'configuration.json') in downloads
    assert (REFINER_ID, REVISION, 'unet/diffusion_pytorch_model.safetensors') in downloads
    assert {revision for _, revision, _ in downloads} == {REVISION}
    assert not hub_server.unhandled()
    assert foreign_hosts(server.env) == []
    # ModelScope's server downloads the whole base repo; the pipeline reads none of its other weights
    # (they are not loadable, so reading one would have failed).
    assert {(BASE_ID, REVISION, decoy) for decoy in BASE_DECOYS} <= set(downloads)


def _png_base64(bgr: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode('.png', bgr)[1].tobytes()).decode('ascii')


# The caller's own picture and mask as JSON callers send them: base64 PNG.
PICTURE = _png_base64(np.ascontiguousarray(np.kron(np.eye(2, dtype=np.uint8)[:, :, None] * np.array(
    [40, 200, 90], np.uint8), np.ones((32, 32, 1), np.uint8))))
MASK = _png_base64(np.pad(np.full((32, 32), 255, np.uint8), 16))

# Every parameter of the contract, sent in "parameters": one request per refiner mode.
EVERY_PARAMETER = [
    ('a red dog on a blue sea', {
        'negative_prompt': 'blurry', 'prompt_2': 'a painting of a dog', 'negative_prompt_2': 'dark',
        'num_inference_steps': 6, 'guidance_scale': 7.5, 'guidance_rescale': 0.3, 'scheduler': 'dpmpp_2m',
        'height': 48, 'width': 80, 'seed': 11, 'num_images_per_prompt': 2, 'refiner_mode': 'ensemble',
        'high_noise_frac': 0.6, 'original_size': [96, 96], 'crops_coords_top_left': [8, 0],
        'target_size': [64, 64], 'negative_original_size': [32, 32], 'negative_crops_coords_top_left': [0, 8],
        'negative_target_size': [48, 48], 'aesthetic_score': 7.0, 'negative_aesthetic_score': 2.0,
        'clip_skip': 1}),
    ('a (red:1.4) circle and a [blue] square', {
        'prompt_weighting': True, 'refiner_mode': 'sdedit', 'strength': 0.5, 'aspect_ratio': '16:9',
        'num_inference_steps': 4, 'seed': 12, 'scheduler': 'euler_ancestral'}),
    ('a green tree', {'refiner_mode': 'none', 'num_inference_steps': 3, 'seed': 13, 'guidance_scale': 1.0,
                      'step_cache': 2, 'scheduler': 'euler_trailing'}),
    ('a green square on a white background', {
        'image': PICTURE, 'mask_image': MASK, 'denoising_strength': 0.8, 'refiner_mode': 'sdedit',
        'num_inference_steps': 6, 'seed': 14}),
    ('a red circle', {'image': PICTURE, 'refiner_mode': 'refiner_only', 'strength': 0.5, 'num_inference_steps': 6,
                      'seed': 15}),
]


def test_every_parameter_works_in_the_requests_parameters(server, direct):
    covered = set().union(*(params for _, params in EVERY_PARAMETER))
    assert covered == {p.name for p in PARAMS} - {'text'}, 'a parameter of the contract is not sent'
    for text, params in EVERY_PARAMETER:
        body = assert_served_like_direct(server, direct, text, params)
        assert len(body['output_imgs']) == params.get('num_images_per_prompt', 1)
        # Pictures are the caller's: not repeated in the answer's parameters.
        sent = {k: v for k, v in params.items() if k not in ('aspect_ratio', 'image', 'mask_image')}
        assert {k: body['parameters'][k] for k in sent} == sent
        if 'aspect_ratio' in params:  # SDXL's nearest bucket, scaled to the tiny model's native 64
            height, width = bucket_for_aspect_ratio(params['aspect_ratio'], 64, 8)
            assert (body['parameters']['height'], body['parameters']['width']) == (height, width)
            assert width > height


# (request body, text the error response must hold)
BAD_REQUESTS = [
    ({'input': {'text': 'a dog'}, 'parameters': {'num_inference_steps': 0}},
     'ValueError: num_inference_steps must be an integer >= 1 and <= 1000, got 0'),
    ({'input': {'text': 'a dog'}, 'parameters': {'bogus': 1}}, "ValueError: unknown parameter(s) 'bogus'"),
    ({'input': {'text': 'a dog'}, 'parameters': {'scheduler': 'nope'}},
     "ValueError: scheduler must be one of 'euler'"),
    ({'input': {'text': 'a dog'}, 'parameters': {'guidance_scale': 'high'}},
     "TypeError: guidance_scale must be a number >= 0 and <= 100, got str 'high'"),
    ({'input': {'text': 'a dog'}, 'parameters': {'height': 30}},
     'ValueError: height must be a multiple of 8 between 8 and 4096, got 30'),
    ({'input': {'text': 'a dog'}, 'parameters': {'refiner_mode': 'none', 'strength': 0.5}},
     "ValueError: strength applies only to refiner_mode='sdedit' or 'refiner_only', not 'none'"),
    ({'input': {'text': 'a dog'}, 'parameters': {'image': 'data:image/png;base64,AAAA'}},
     'ValueError: image: the data URL does not hold base64 PNG or JPEG data'),
    ({'input': {'text': 'a dog'}, 'parameters': {'mask_image': MASK}}, 'ValueError: mask_image needs an image'),
    # A network caller cannot make the server read a picture from the server's own disk.
    ({'input': {'text': 'a dog'}, 'parameters': {'image': os.path.abspath(__file__)}},
     'ValueError: image: file paths are not read here (MODELSCOPE_SDXL_PICTURE_PATHS=0, as under modelscope server)'),
    # ModelScope's server accepts only the task's input keys ("text") in "input".
    ({'input': {'text': 'a dog', 'seed': 1}}, "KeyError: 'seed'"),
    # Hostile bodies (issue 14) that reach the pipeline: refused by name.
    ({'input': {'text': 'a dog \ud800'}}, "ValueError: text holds a lone surrogate ('\\ud800' at character 6)"),
    ({'input': {'text': 'a dog'}, 'parameters': {'negative_prompt': '\udcff'}},
     'ValueError: negative_prompt holds a lone surrogate'),
    ({'input': {'text': 'a dog'}, 'parameters': {'batch_size': 2}},
     'ValueError: batch_size applies to a list of inputs; this call has a single input'),
    ({'input': {'text': 'a dog'}, 'parameters': {'num_images_per_prompt': 8, 'height': 4096, 'width': 4096,
                                                  'num_inference_steps': 1000}},
     'more than max_pixel_steps_per_call (4294967296) of this pipeline'),
    ({'input': {'text': 'a (red:1' + '0' * 400 + ')'}, 'parameters': {'prompt_weighting': True}},
     "ValueError: text: the weight of 'red' is inf"),
    ({'input': 5}, "TypeError: input must be a dict like {'text': 'a dog'} or a prompt string, got int"),
    # ... and those ModelScope's server refuses itself, before the pipeline is called (docs/reliability.md).
    ({'input': None}, "AttributeError: 'NoneType' object has no attribute 'items'"),
    ({'input': ['a dog']}, "AttributeError: 'list' object has no attribute 'items'"),
    ({'input': {'text': 'a dog'}, 'parameters': []}, 'argument after ** must be a mapping, not list'),
    ({'input': {'text': 'a dog'}, 'parameters': None}, 'argument after ** must be a mapping, not NoneType'),
    ({'input': {'text': 'a dog'}, 'parameters': 'seed=1'}, 'argument after ** must be a mapping, not str'),
]


def test_a_huge_prompt_is_refused_at_once_and_the_server_stays_responsive(server):
    start = time.perf_counter()
    response = server.call({'input': {'text': 'a red circle ' * 23077}})
    assert time.perf_counter() - start < 5.0  # a guard against minutes of work, not a benchmark
    assert response.status_code == 500
    assert 'ValueError: text has 300001 characters, more than max_prompt_chars (10000)' in response.text
    assert requests.get(server.url + '/health', timeout=5).status_code == 200


def test_a_bad_parameter_gets_an_error_naming_it_and_the_server_keeps_serving(server, direct):
    for body, expected in BAD_REQUESTS:
        response = server.call(body)
        # ModelScope's server answers any error with 500 and, in its debug mode, the traceback as text.
        assert response.status_code == 500, response.text[-2000:]
        assert expected in response.text, response.text[-2000:]
    assert_served_like_direct(server, direct, 'a yellow star', {'seed': 21, 'num_inference_steps': 4})


def test_the_plugin_keeps_the_modelscope_command_light(tmp_path):
    """What `modelscope --help` (any `modelscope` command) pays for the plugin: the plugin's import and
    parser, nothing heavy. The pipeline's name is known to ModelScope before its module is imported."""
    script = '''
import json, sys
import modelscope_sdxl.cli.plugin
alone = [m for m in ('torch', 'modelscope', 'diffusers', 'numpy') if m in sys.modules]
from modelscope_hub.cli.main import _build_parser
parser = _build_parser()
heavy = [m for m in ('diffusers', 'transformers', 'modelscope.pipelines', 'modelscope_sdxl.pipeline',
                     'modelscope_sdxl.model', 'cv2', 'fastapi') if m in sys.modules]
from modelscope.utils.import_utils import LazyImportModule
index = LazyImportModule.get_ast_index()['index']
entries = {str(k): v['module'] for k, v in index.items() if 'sdxl-base-refiner' in k[2]}
args = parser.parse_args(['sdxl', 'schema'])
print(json.dumps({'alone': alone, 'heavy': heavy, 'entries': entries, 'command': args._command.__module__}))
'''
    env = command_env(str(tmp_path / 'child'))
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        'alone': [],  # the plugin module by itself imports none of them
        'heavy': [],  # nor does the `modelscope` command's start-up with the plugin loaded
        'entries': {"('MODELS', 'text-to-image-synthesis', 'sdxl-base-refiner')": 'modelscope_sdxl.model',
                    "('PIPELINES', 'text-to-image-synthesis', 'sdxl-base-refiner-pipeline')":
                        'modelscope_sdxl.pipeline'},
        'command': 'modelscope_sdxl.cli.plugin'}


def test_registration_adds_the_names_to_an_index_that_is_already_loaded():
    """When ModelScope's index is already loaded (ModelScope imported before this package), installing
    adds the names at once; installing twice wraps the index lookup once."""
    from modelscope.utils.import_utils import LazyImportModule

    from modelscope_sdxl import registration

    index = LazyImportModule.get_ast_index()['index']
    patched = LazyImportModule.__dict__['get_ast_index']
    saved = {key: index.pop(key) for key in registration.LAZY_MODULES}
    LazyImportModule.get_ast_index = staticmethod(patched.__func__.__wrapped__)
    try:
        assert not registration.is_installed()
        assert not set(registration.LAZY_MODULES) & set(LazyImportModule.get_ast_index()['index'])
        registration.install()
        registration.install()
        assert registration.is_installed()
        wrapped = LazyImportModule.__dict__['get_ast_index'].__func__
        assert wrapped.__wrapped__ is patched.__func__.__wrapped__  # wrapped once, not twice
        entries = LazyImportModule.get_ast_index()['index']
        assert {key: entries[key]['module'] for key in registration.LAZY_MODULES} == {
            ('MODELS', 'text-to-image-synthesis', 'sdxl-base-refiner'): 'modelscope_sdxl.model',
            ('PIPELINES', 'text-to-image-synthesis', 'sdxl-base-refiner-pipeline'): 'modelscope_sdxl.pipeline'}
        assert all(os.path.isfile(entries[key]['filepath']) for key in registration.LAZY_MODULES)
    finally:
        LazyImportModule.get_ast_index = patched
        index.update(saved)
