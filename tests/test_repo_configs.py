"""Plain diffusers-format repos with pipeline_name=: whatever their configuration.json says of the model.

Hub SDXL repos carry a configuration.json naming ModelScope's own model type ``stable-diffusion-xl``
and pipeline ``diffusers-stable-diffusion``; others have no ``model`` section or no configuration.json.
With ``pipeline_name='sdxl-base-refiner-pipeline'`` each loads as the diffusers folder it is, from a
local folder and through the stand-in hub, and draws what the same weights draw with this package's
own configuration.
"""
import json
import os
import shutil

import numpy as np
import pytest

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.names import PIPELINE_TYPE
from modelscope_sdxl.loading.repo_configs import configured_model_type, names_this_model

from hub_fixtures import hub_environment
from hub_stub import HubStub, StubRepo

TASK = Tasks.text_to_image_synthesis
CALL = {'text': 'a dog', 'seed': 3, 'num_inference_steps': 4}
# What ModelScope's hub SDXL repos (e.g. AI-ModelScope/stable-diffusion-xl-base-1.0) carry.
MODELSCOPE_SDXL = {'framework': 'pytorch', 'task': 'text-to-image-synthesis',
                   'model': {'type': 'stable-diffusion-xl'}, 'pipeline': {'type': 'diffusers-stable-diffusion'}}
CONFIGS = {
    'modelscope-model-type': MODELSCOPE_SDXL,
    'no-model-section': {'framework': 'pytorch', 'task': 'text-to-image-synthesis'},
    'no-configuration': None,
}


@pytest.fixture(scope='module')
def plain_repos(tiny_sdxl, tmp_path_factory):
    """{kind: folder}: the tiny base with each kind of configuration.json."""
    root = tmp_path_factory.mktemp('plain-repos')
    folders = {}
    for kind, config in CONFIGS.items():
        folder = str(root / kind)
        shutil.copytree(tiny_sdxl[0], folder)
        path = os.path.join(folder, 'configuration.json')
        if config is None:
            os.remove(path)
        else:
            with open(path, 'w', encoding='utf-8') as f:
                json.dump(config, f)
        folders[kind] = folder
    return folders


@pytest.fixture(scope='module')
def reference(tiny_sdxl):
    """The same weights loaded through this package's own configuration.json."""
    pipe = pipeline(task=TASK, model=tiny_sdxl[0], refiner=tiny_sdxl[1], device='cpu')
    return pipe(dict(CALL))['output_imgs']


def max_difference(a, b):
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def test_configured_model_type(plain_repos, tiny_sdxl):
    assert configured_model_type(plain_repos['modelscope-model-type']) == 'stable-diffusion-xl'
    assert configured_model_type(plain_repos['no-model-section']) is None
    assert configured_model_type(plain_repos['no-configuration']) is None
    assert names_this_model(tiny_sdxl[0])
    assert not any(names_this_model(folder) for folder in plain_repos.values())


def test_invalid_configuration_json_is_named(tmp_path):
    (tmp_path / 'configuration.json').write_text('{not json')
    with pytest.raises(ValueError, match='configuration.json is not valid JSON'):
        configured_model_type(str(tmp_path))


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_local_plain_repo_loads_with_pipeline_name(plain_repos, tiny_sdxl, reference, kind):
    pipe = pipeline(task=TASK, model=plain_repos[kind], pipeline_name=PIPELINE_TYPE, refiner=tiny_sdxl[1],
                    device='cpu')
    assert type(pipe.model).__name__ == 'SDXLModel'
    assert pipe.model.model_dir == plain_repos[kind]
    assert max_difference(pipe(dict(CALL))['output_imgs'], reference) == 0


@pytest.fixture(scope='module')
def plain_hub(plain_repos):
    """The stand-in hub serving each kind as test-owner/plain-<kind> (tag v1.0.0)."""
    repos = {f'test-owner/plain-{kind}': StubRepo({'v1.0.0': folder, 'master': folder}, tags=('v1.0.0',))
             for kind, folder in plain_repos.items()}
    stub = HubStub(repos).start()
    yield stub
    stub.stop()


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_hub_plain_repo_loads_with_pipeline_name(plain_hub, tiny_sdxl, reference, tmp_path, kind):
    repo_id = f'test-owner/plain-{kind}'
    with hub_environment(plain_hub, str(tmp_path / 'cache')) as env:
        pipe = pipeline(task=TASK, model=repo_id, pipeline_name=PIPELINE_TYPE, revision='v1.0.0',
                        refiner=tiny_sdxl[1], device='cpu')
        assert pipe.model.model_dir == env.snapshot(repo_id, 'v1.0.0')
        fetched = {path for _, _, path in plain_hub.downloads(repo_id)}
        assert 'unet/diffusion_pytorch_model.safetensors' in fetched
        assert ('configuration.json' in fetched) == (CONFIGS[kind] is not None)
        images = pipe(dict(CALL))['output_imgs']
    assert max_difference(images, reference) == 0
