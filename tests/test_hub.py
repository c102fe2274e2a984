"""The hub path for real: ModelScope's own client downloads the repos from a stand-in hub on 127.0.0.1.

The stand-in hub (hub_stub.py) serves test-owner/sdxl-tiny-base and test-owner/sdxl-tiny-refiner,
each at tags v1.0.0 and v2.0.0 (different weights) and a master branch (v2.0.0's content). Each
base's configuration.json names the refiner by hub id at its own tag. Every repo also holds files
the pipeline must not fetch (pickle weights, fp16 variants, a single-file checkpoint).
"""
import contextlib
import fnmatch
import os
import socket
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pytest
import requests

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.hub import BASE_FILES, REFINER_FILES
from modelscope_sdxl.names import PIPELINE_TYPE

from hub_fixtures import hub, hub_environment, hub_repos, hub_server  # noqa: F401  (fixtures)
from hub_stub import BASE_DECOYS, BASE_ID, REFINER_DECOYS, REFINER_ID, TAGS, wait_until_closed

TASK = Tasks.text_to_image_synthesis
CALL = {'text': 'a dog', 'seed': 1, 'num_inference_steps': 4}
# What the docs (docs/hub.md) tell callers of the model-card snippet to pass so that ModelScope's
# builder, which downloads the base repo before this package runs, skips what SDXL never reads.
BASE_IGNORE = ['*.bin', '*.fp16.safetensors', 'sd_xl_*.safetensors', '*.md']


def files_in(folder: str) -> set:
    """Relative paths of the files under `folder` (posix separators)."""
    found = set()
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, '/'))
    return found


def selected(folder: str, patterns: List[str]) -> set:
    return {f for f in files_in(folder) if any(fnmatch.fnmatch(f, p) for p in patterns)}


def max_difference(a: List[np.ndarray], b: List[np.ndarray]) -> int:
    assert len(a) == len(b)
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def local_images(base_dir: str, refiner_dir: str) -> List[np.ndarray]:
    pipe = pipeline(task=TASK, model=base_dir, refiner=refiner_dir, device='cpu')
    return pipe(dict(CALL))['output_imgs']


@dataclass
class Run:
    model_dir: str
    refiner_dir: str
    images: List[np.ndarray]
    requests: list


@dataclass
class ModelCardRuns:
    cache: str
    hub: Dict[str, Run]  # tag -> the model card's call with model_revision=tag
    local: Dict[str, List[np.ndarray]]  # tag -> that tag's folders loaded locally
    local_requests: list  # hub requests made while loading the local folders


@pytest.fixture(scope='module')
def model_card(hub_server, hub_repos, tmp_path_factory):
    """The model card's snippet with a hub id at each tag, and each tag's folders loaded locally."""
    cache = str(tmp_path_factory.mktemp('model-card') / 'modelscope-cache')
    hub_server.start()
    runs = ModelCardRuns(cache=cache, hub={}, local={}, local_requests=[])
    with hub_environment(hub_server, cache):
        for tag in TAGS:
            start = len(hub_server.requests)
            pipe = pipeline(task=TASK, model=BASE_ID, model_revision=tag, device='cpu')
            made = hub_server.requests[start:]
            runs.hub[tag] = Run(pipe.model.model_dir, pipe.model.components.refiner_dir, pipe(dict(CALL))['output_imgs'], made)
        start = len(hub_server.requests)
        for tag in TAGS:
            runs.local[tag] = local_images(*hub_repos['local'][tag])
        runs.local_requests = hub_server.requests[start:]
    return runs


# ---------------------------------------------------------------------------------------------
# The client is pointed at the stand-in hub, and nothing else is reachable
# ---------------------------------------------------------------------------------------------
def test_the_client_uses_the_stand_in_hub_and_the_temporary_cache(hub):
    from modelscope.hub.api import HubApi
    from modelscope_hub.config import get_default_config

    assert HubApi().endpoint == hub.stub.endpoint
    assert os.path.realpath(get_default_config().cache_dir) == os.path.realpath(hub.cache)


def test_the_client_reads_revisions_and_single_files_from_the_stand_in_hub(hub, hub_repos):
    from modelscope.hub.api import HubApi
    from modelscope.hub.file_download import model_file_download

    branches, tags = HubApi().get_model_branches_and_tags(BASE_ID)
    assert (branches, sorted(tags)) == (['master'], list(TAGS))
    for tag in TAGS:
        path = model_file_download(BASE_ID, 'configuration.json', revision=tag)
        assert path == os.path.join(hub.snapshot(BASE_ID, tag), 'configuration.json')
        with open(path, 'rb') as got, open(os.path.join(hub_repos['local'][tag][0], 'configuration.json'), 'rb') as want:
            assert got.read() == want.read()


def test_other_hosts_are_refused_and_fail_the_test(hub_server, tmp_path):
    with pytest.raises(AssertionError, match='www.modelscope.cn'):
        with hub_environment(hub_server, str(tmp_path / 'cache')):
            with pytest.raises(socket.gaierror):
                socket.getaddrinfo('www.modelscope.cn', 443)


# ---------------------------------------------------------------------------------------------
# Revisions: the model card's call downloads base and refiner at the tag asked for
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('tag', TAGS)
def test_model_card_downloads_base_and_refiner_into_the_cache_at_the_revision(model_card, tag):
    run = model_card.hub[tag]
    cache = os.path.realpath(model_card.cache)
    assert os.path.realpath(run.model_dir) == os.path.join(
        cache, 'models', 'test-owner--sdxl-tiny-base', 'snapshots', tag)
    # The base's configuration.json names the refiner at the same tag.
    assert os.path.realpath(run.refiner_dir) == os.path.join(
        cache, 'models', 'test-owner--sdxl-tiny-refiner', 'snapshots', tag)
    downloads = [r for r in run.requests if r.path.endswith('/repo')]
    assert {r.path for r in downloads} == {f'/api/v1/models/{BASE_ID}/repo', f'/api/v1/models/{REFINER_ID}/repo'}
    assert {r.query['Revision'] for r in run.requests if 'Revision' in r.query} == {tag}


@pytest.mark.parametrize('tag', TAGS)
def test_model_card_image_equals_the_same_revision_loaded_from_local_folders(model_card, tag):
    assert max_difference(model_card.hub[tag].images, model_card.local[tag]) <= 2


def test_the_two_revisions_give_different_images(model_card):
    v1, v2 = (model_card.hub[tag].images[0].astype(int) for tag in TAGS)
    assert np.abs(v1 - v2).max() > 40
    assert np.abs(v1 - v2).mean() > 10


def test_local_folders_need_no_hub(model_card):
    assert model_card.local_requests == []


def test_refiner_revision_argument_overrides_configuration(hub, hub_repos):
    pipe = pipeline(task=TASK, model=BASE_ID, model_revision='v1.0.0', refiner_revision='v2.0.0', device='cpu')
    assert pipe.model.model_dir == hub.snapshot(BASE_ID, 'v1.0.0')
    assert pipe.model.components.refiner_dir == hub.snapshot(REFINER_ID, 'v2.0.0')
    assert {rev for _, rev, _ in hub.stub.downloads(REFINER_ID)} == {'v2.0.0'}
    expected = local_images(hub_repos['local']['v1.0.0'][0], hub_repos['local']['v2.0.0'][1])
    assert max_difference(pipe(dict(CALL))['output_imgs'], expected) <= 2


# ---------------------------------------------------------------------------------------------
# What is downloaded
# ---------------------------------------------------------------------------------------------
def test_refiner_download_is_only_what_the_refiner_stage_reads(model_card, hub_repos):
    for tag in TAGS:
        served = hub_repos['local'][tag][1]
        got = files_in(model_card.hub[tag].refiner_dir)
        assert got == selected(served, REFINER_FILES)
        assert 'unet/diffusion_pytorch_model.safetensors' in got
        # Shared with the base, so never fetched from the refiner repo.
        assert 'text_encoder_2/model.safetensors' in files_in(served)
        assert 'vae/diffusion_pytorch_model.safetensors' in files_in(served)
        assert not got & {'text_encoder_2/model.safetensors', 'vae/diffusion_pytorch_model.safetensors'}
        assert not got & set(REFINER_DECOYS)
        requested = {r.query['FilePath'] for r in model_card.hub[tag].requests
                     if r.path == f'/api/v1/models/{REFINER_ID}/repo'}
        assert requested == got


def test_model_card_base_is_downloaded_whole_by_modelscopes_builder(model_card, hub_repos):
    """ModelScope's pipeline() downloads the base snapshot itself, with no allow patterns, before
    this package runs: unless the caller passes ignore_file_pattern, the base snapshot is the whole
    repo, unused files included. (This documents ModelScope 1.40's behaviour, see docs/hub.md.)"""
    for tag in TAGS:
        assert files_in(model_card.hub[tag].model_dir) == files_in(hub_repos['local'][tag][0])
        assert set(BASE_DECOYS) <= files_in(model_card.hub[tag].model_dir)


def test_ignore_file_pattern_limits_the_builders_base_download_to_what_sdxl_reads(hub, hub_repos):
    pipe = pipeline(task=TASK, model=BASE_ID, model_revision='v1.0.0', ignore_file_pattern=BASE_IGNORE,
                    device='cpu')
    served_base, served_refiner = hub_repos['local']['v1.0.0']
    assert files_in(pipe.model.model_dir) == selected(served_base, BASE_FILES)
    assert not files_in(pipe.model.model_dir) & set(BASE_DECOYS)
    assert files_in(pipe.model.components.refiner_dir) == selected(served_refiner, REFINER_FILES)
    fetched = {path for repo, _, path in hub.stub.downloads() if repo == BASE_ID}
    assert fetched == selected(served_base, BASE_FILES)


def test_pipeline_name_path_downloads_only_what_sdxl_reads(hub, hub_repos):
    """With pipeline_name=, ModelScope's builder downloads nothing; this package fetches the base
    with its allow patterns. Without a revision that is the repo's master branch, whose
    configuration.json names the refiner at v2.0.0."""
    pipe = pipeline(task=TASK, model=BASE_ID, pipeline_name=PIPELINE_TYPE, device='cpu')
    assert pipe.model.model_dir == hub.snapshot(BASE_ID, 'master')
    assert pipe.model.components.refiner_dir == hub.snapshot(REFINER_ID, 'v2.0.0')
    served_base, served_refiner = hub_repos['local']['v2.0.0']
    assert files_in(pipe.model.model_dir) == selected(served_base, BASE_FILES)
    assert files_in(pipe.model.components.refiner_dir) == selected(served_refiner, REFINER_FILES)
    for repo, patterns, served in ((BASE_ID, BASE_FILES, served_base), (REFINER_ID, REFINER_FILES, served_refiner)):
        assert sorted(path for r, _, path in hub.stub.downloads() if r == repo) == sorted(selected(served, patterns))


def test_pipeline_name_path_downloads_the_base_at_the_revision_asked_for(hub, model_card):
    """ModelScope's pipeline() does not pass model_revision on when pipeline_name= is given, so the
    pipeline takes the base's revision as `revision=`."""
    pipe = pipeline(task=TASK, model=BASE_ID, pipeline_name=PIPELINE_TYPE, revision='v1.0.0', device='cpu')
    assert pipe.model.model_dir == hub.snapshot(BASE_ID, 'v1.0.0')
    assert pipe.model.components.refiner_dir == hub.snapshot(REFINER_ID, 'v1.0.0')
    assert {rev for _, rev, _ in hub.stub.downloads()} == {'v1.0.0'}
    assert max_difference(pipe(dict(CALL))['output_imgs'], model_card.local['v1.0.0']) <= 2


# ---------------------------------------------------------------------------------------------
# Offline: a second pipeline, built with the hub stopped, loads from the cache
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def hub_stopped(hub_server, cache):
    """The client pointed at the stand-in hub's port with nothing listening there; restarts it after."""
    with hub_environment(hub_server, cache) as env:
        hub_server.stop()
        try:
            wait_until_closed(hub_server.port)
            yield env
        finally:
            hub_server.start()


def test_with_the_hub_stopped_the_cached_folders_load(model_card, hub_server):
    """The way docs/hub.md gives for offline use: find the cached revisions, pass both folders."""
    from modelscope.hub.snapshot_download import snapshot_download

    with hub_stopped(hub_server, model_card.cache):
        base_dir = snapshot_download(BASE_ID, revision='v1.0.0', local_files_only=True)
        refiner_dir = snapshot_download(REFINER_ID, revision='v1.0.0', local_files_only=True)
        assert (base_dir, refiner_dir) == (model_card.hub['v1.0.0'].model_dir, model_card.hub['v1.0.0'].refiner_dir)
        pipe = pipeline(task=TASK, model=base_dir, refiner=refiner_dir, device='cpu')
        assert max_difference(pipe(dict(CALL))['output_imgs'], model_card.hub['v1.0.0'].images) <= 2


def test_with_the_hub_stopped_the_refiner_named_by_configuration_comes_from_the_cache(model_card, hub_server):
    """A second pipeline from the cached base folder alone: the refiner its configuration.json names
    by hub id was downloaded before, so it loads from the cache when the hub cannot be reached."""
    with hub_stopped(hub_server, model_card.cache) as env:
        pipe = pipeline(task=TASK, model=model_card.hub['v1.0.0'].model_dir, device='cpu')
        assert pipe.model.components.refiner_dir == env.snapshot(REFINER_ID, 'v1.0.0')
        assert max_difference(pipe(dict(CALL))['output_imgs'], model_card.hub['v1.0.0'].images) <= 2


# ---------------------------------------------------------------------------------------------
# Errors name what was not found
# ---------------------------------------------------------------------------------------------
def test_unknown_base_revision(hub):
    with pytest.raises(requests.exceptions.HTTPError) as info:
        pipeline(task=TASK, model=BASE_ID, model_revision='v9.9.9', device='cpu')
    message = str(info.value)
    assert '404' in message and BASE_ID in message and 'v9.9.9' in message


def test_unknown_base_repo(hub):
    with pytest.raises(ValueError) as info:
        pipeline(task=TASK, model='test-owner/no-such-model', model_revision='v1.0.0', device='cpu')
    message = str(info.value)
    assert 'invalid model repo path' in message and 'test-owner/no-such-model' in message and '404' in message


def test_unknown_refiner_revision(hub):
    with pytest.raises(requests.exceptions.HTTPError) as info:
        pipeline(task=TASK, model=BASE_ID, model_revision='v1.0.0', refiner_revision='v9.9.9', device='cpu')
    message = str(info.value)
    assert '404' in message and REFINER_ID in message and 'v9.9.9' in message
    snapshot = hub.snapshot(REFINER_ID, 'v9.9.9')
    assert not os.path.isdir(snapshot) or not os.listdir(snapshot)


def test_unknown_refiner_repo(hub):
    with pytest.raises(requests.exceptions.HTTPError) as info:
        pipeline(task=TASK, model=BASE_ID, model_revision='v1.0.0', refiner='test-owner/no-such-refiner',
                 refiner_revision='v1.0.0', device='cpu')
    message = str(info.value)
    assert '404' in message and 'test-owner/no-such-refiner' in message
