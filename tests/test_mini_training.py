"""The training command behind the shipped mini model: seeded, reproducible, and it writes what ships.

The full run takes about 26 minutes (docs/mini-model.md); these tests run every stage with a few
steps each.
"""
import filecmp
import json
import os

import numpy as np
import pytest

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.mini import train as mini_training
from modelscope_sdxl.mini import mini_model_dir

SHORT_RUN = dict(vae_steps=3, vae_full_steps=2, vae_batch=4, base_steps=4, text_steps=2, base_batch=8,
                 refiner_steps=2, refiner_batch=8, data_size=48, evaluate=False)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    outs = [str(tmp_path_factory.mktemp(f'mini-run-{i}')) for i in range(2)]
    logs = [mini_training.train(out, seed=0, **SHORT_RUN) for out in outs]
    return outs, logs


def test_the_same_seed_gives_the_same_bytes(two_runs):
    (first, second), _ = two_runs
    names = files_under(first)
    assert names == files_under(second)
    assert sum(n.endswith('.safetensors') for n in names) == 7
    # Everything but the log, whose stage times differ, is byte for byte the same.
    _, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert (mismatch, errors) == (['training_log.json'], [])
    logs = []
    for out in (first, second):
        with open(os.path.join(out, 'training_log.json'), encoding='utf-8') as f:
            logs.append(json.load(f))
            assert logs[-1].pop('seconds').keys() == {'vae', 'latents', 'base', 'refiner', 'total'}
    assert logs[0] == logs[1]


def test_the_run_writes_the_shipped_layout_and_configs(two_runs):
    (out, _), (log, _) = two_runs
    shipped = os.path.dirname(mini_model_dir())
    shipped_files = [n for n in files_under(shipped) if not n.startswith('__')]  # minus the package's code
    assert files_under(out) == shipped_files
    for name in shipped_files:
        if name.endswith('.safetensors') or name == 'training_log.json':
            continue
        with open(os.path.join(out, name), encoding='utf-8') as a, open(os.path.join(shipped, name),
                                                                        encoding='utf-8') as b:
            ours, theirs = a.read(), b.read()
        if name.endswith('vae/config.json'):
            # The one config value that depends on the trained weights: 1 / std of the latents.
            ours, theirs = json.loads(ours), json.loads(theirs)
            assert ours.pop('scaling_factor') == pytest.approx(log['vae']['scaling_factor'])
            theirs.pop('scaling_factor')
        assert ours == theirs, name
    assert log['steps']['base'] == [SHORT_RUN['base_steps'], SHORT_RUN['base_batch']]
    with open(os.path.join(out, 'training_log.json'), encoding='utf-8') as f:
        assert json.load(f)['seed'] == 0


def test_the_trained_folders_load_through_the_hub_code_path(two_runs):
    (out, _), _ = two_runs
    # The pipeline checks both folders (layout, weight shapes, fit) before loading them.
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=os.path.join(out, 'base'), device='cpu')
    out = pipe({'text': 'a red circle on a blue background', 'seed': 1, 'num_inference_steps': 4})
    assert out['parameters']['refiner_mode'] == 'ensemble'
    image = out['output_imgs'][0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
