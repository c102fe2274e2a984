"""ModelScope's and diffusers' own loading arguments: torch_dtype / torch_type, use_safetensors, --dtype."""
import warnings

import numpy as np
import pytest
import torch

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.loading import dtypes
from modelscope_sdxl.cli import build_parser as cli_parser
from modelscope_sdxl.cli.errors import CommandError
from modelscope_sdxl.cli.sources import ModelSource
from modelscope_sdxl.loading.dtypes import SlowDtypeWarning

TASK = Tasks.text_to_image_synthesis
CALL = {'text': 'a red circle', 'seed': 4, 'num_inference_steps': 5}


def build(tiny_sdxl, **kwargs):
    return pipeline(task=TASK, model=tiny_sdxl[0], device='cpu', **kwargs)


def draw(pipe):
    return pipe(dict(CALL))['output_imgs'][0].astype(int)


def network_dtypes(pipe):
    c = pipe.model.components
    return {'unet': c.base.unet.dtype, 'text_encoder': c.base.text_encoder.dtype,
            'text_encoder_2': c.base.text_encoder_2.dtype, 'refiner unet': c.refiner.unet.dtype,
            'vae': c.base.vae.dtype}


@pytest.mark.parametrize('kwargs', [{'torch_dtype': 'float32'}, {'torch_type': torch.float32},
                                    {'torch_dtype': torch.float32, 'torch_type': 'float32', 'use_safetensors': True}])
def test_explicit_float32_equals_the_default(sdxl_pipe, tiny_sdxl, kwargs):
    pipe = build(tiny_sdxl, **kwargs)
    assert set(network_dtypes(pipe).values()) == {torch.float32}
    assert np.array_equal(draw(pipe), draw(sdxl_pipe))


@pytest.mark.parametrize('name,dtype', [('bfloat16', torch.bfloat16), ('float16', torch.float16)])
def test_half_precision_on_a_cpu_without_native_units_runs_and_warns(tiny_sdxl, sdxl_pipe, monkeypatch, name, dtype):
    monkeypatch.setattr(dtypes, 'cpu_has_native_units', lambda d: False)
    with pytest.warns(SlowDtypeWarning, match=f'{name} on this CPU has no native units'):
        pipe = build(tiny_sdxl, torch_dtype=name)
    found = network_dtypes(pipe)
    assert found.pop('vae') == torch.float32, 'the VAE stays fp32, where fp16 overflows'
    assert set(found.values()) == {dtype}
    image, reference = draw(pipe), draw(sdxl_pipe)
    assert image.shape == reference.shape
    # Same weights in less precision: close to the fp32 image, not equal to it.
    assert np.abs(image - reference).mean() < 3


def test_half_precision_on_a_cpu_with_native_units_does_not_warn(tiny_sdxl, monkeypatch):
    monkeypatch.setattr(dtypes, 'cpu_has_native_units', lambda d: True)
    with warnings.catch_warnings():
        warnings.simplefilter('error', SlowDtypeWarning)
        pipe = build(tiny_sdxl, torch_type=torch.bfloat16)
    assert pipe.model.components.base.unet.dtype == torch.bfloat16


def test_native_units_are_asked_of_the_cpu():
    assert dtypes.cpu_has_native_units(torch.float32) is True
    for dtype in (torch.float16, torch.bfloat16):
        assert isinstance(dtypes.cpu_has_native_units(dtype), bool)


@pytest.mark.parametrize('kwargs,error,words', [
    ({'torch_dtype': 'fp8'}, ValueError, ['torch_dtype', "'float16', 'bfloat16', 'float32'", "'fp8'"]),
    ({'torch_type': torch.int8}, ValueError, ['torch_type', 'torch.float16, torch.bfloat16 or torch.float32']),
    ({'torch_dtype': 16}, TypeError, ['torch_dtype', 'a torch dtype', 'int']),
    ({'torch_dtype': 'float16', 'torch_type': 'float32'}, ValueError, ['torch_dtype', 'torch_type', 'one of them']),
    ({'use_safetensors': False}, ValueError, ['use_safetensors=False', '.safetensors', 'allow_pickle=True']),
    ({'use_safetensors': 'yes'}, TypeError, ['use_safetensors', 'True or False']),
])
def test_bad_values_are_refused_naming_the_argument(tiny_sdxl, kwargs, error, words):
    with pytest.raises(error) as info:
        build(tiny_sdxl, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_use_safetensors_false_with_allow_pickle_is_accepted(tiny_sdxl, sdxl_pipe):
    pipe = build(tiny_sdxl, use_safetensors=False, allow_pickle=True)
    assert np.array_equal(draw(pipe), draw(sdxl_pipe))


def test_cli_dtype_flag_reaches_the_pipeline(tiny_sdxl):
    args = cli_parser().parse_args(['generate', 'a dog', '--model', tiny_sdxl[0], '--device', 'cpu',
                                    '--dtype', 'bfloat16'])
    source = ModelSource.from_args(args)
    assert source.dtype == 'bfloat16'
    pipe = source.build_pipeline()
    assert pipe.model.components.base.unet.dtype == torch.bfloat16
    assert pipe.model.components.base.vae.dtype == torch.float32


def test_cli_dtype_flag_refuses_other_names(capsys):
    with pytest.raises(SystemExit):
        cli_parser().parse_args(['generate', 'a dog', '--dtype', 'fp16'])
    assert "--dtype: invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(CommandError, match="--dtype must be one of float16, bfloat16, float32, got 'half'"):
        ModelSource(dtype='half').check()


def test_cli_batch_passes_dtype_on(monkeypatch, tmp_path):
    from modelscope_sdxl.cli import batch

    seen = {}

    class Done:
        complete = True

    monkeypatch.setattr(batch, 'run_batch', lambda prompts, out, **kwargs: seen.update(kwargs) or Done())
    args = cli_parser().parse_args(['batch', str(tmp_path / 'p.jsonl'), '--out', str(tmp_path), '--dtype', 'float16'])
    assert batch.batch_command(args) == 0
    assert seen['dtype'] == 'float16'
