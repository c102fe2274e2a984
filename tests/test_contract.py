"""The input contract: every bad input is rejected before any model work, by type and message,
and the pipeline keeps working afterwards."""
import math

import numpy as np
import pytest

from modelscope_sdxl.inputs.schema import json_schema
from modelscope_sdxl.parameters import known_parameters

GOOD = {'text': 'a dog', 'seed': 1, 'num_inference_steps': 4}

# (input overrides, exception type, words the message must contain)
BAD_INPUTS = [
    ({'text': None}, ValueError, ['text']),
    ({'text': 42}, TypeError, ['text', 'string']),
    ({'text': ['a', 'b']}, TypeError, ['text']),
    ({'negative_prompt': 3}, TypeError, ['negative_prompt', 'string']),
    ({'prompt_2': b'bytes'}, TypeError, ['prompt_2']),
    ({'num_inference_steps': 0}, ValueError, ['num_inference_steps', '>= 1']),
    ({'num_inference_steps': -5}, ValueError, ['num_inference_steps']),
    ({'num_inference_steps': 2.5}, TypeError, ['num_inference_steps', 'integer']),
    ({'num_inference_steps': '30'}, TypeError, ['num_inference_steps']),
    ({'num_inference_steps': True}, TypeError, ['num_inference_steps']),
    ({'num_inference_steps': 5000}, ValueError, ['num_inference_steps', '<= 1000']),
    ({'guidance_scale': math.nan}, ValueError, ['guidance_scale']),
    ({'guidance_scale': math.inf}, ValueError, ['guidance_scale']),
    ({'guidance_scale': -1.0}, ValueError, ['guidance_scale', '>= 0']),
    ({'guidance_scale': 'high'}, TypeError, ['guidance_scale', 'number']),
    ({'guidance_rescale': 1.5}, ValueError, ['guidance_rescale', '<= 1']),
    ({'height': 65}, ValueError, ['height', 'multiple of 8']),
    ({'width': 0}, ValueError, ['width', 'multiple of 8']),
    ({'width': 8192}, ValueError, ['width', '4096']),
    ({'height': 64.5}, TypeError, ['height']),
    ({'aspect_ratio': 'wide'}, ValueError, ['aspect_ratio', 'W:H']),
    ({'aspect_ratio': '16:0'}, ValueError, ['aspect_ratio']),
    ({'aspect_ratio': '16:9', 'height': 64}, ValueError, ['aspect_ratio', 'height']),
    ({'seed': -1}, ValueError, ['seed', '>= 0']),
    ({'seed': 2**64}, ValueError, ['seed']),
    ({'seed': 'abc'}, TypeError, ['seed']),
    ({'num_images_per_prompt': 0}, ValueError, ['num_images_per_prompt', '>= 1']),
    ({'num_images_per_prompt': 9}, ValueError, ['num_images_per_prompt', 'max_images_per_call']),
    ({'refiner_mode': 'turbo'}, ValueError, ['refiner_mode', "'ensemble'", "'sdedit'", "'none'"]),
    ({'scheduler': 'dpm++'}, ValueError, ['scheduler', "'euler'", "'dpmpp_2m_karras'"]),
    ({'high_noise_frac': 1.0}, ValueError, ['high_noise_frac', '< 1']),
    ({'high_noise_frac': 0}, ValueError, ['high_noise_frac', '> 0']),
    ({'strength': 0.0, 'refiner_mode': 'sdedit'}, ValueError, ['strength', '> 0']),
    ({'strength': 1.0, 'refiner_mode': 'sdedit'}, ValueError, ['strength', '< 1']),
    ({'strength': 0.5}, ValueError, ['strength', "'sdedit'", "'ensemble'"]),
    ({'high_noise_frac': 0.5, 'refiner_mode': 'none'}, ValueError, ['high_noise_frac', "'none'"]),
    ({'aesthetic_score': 7.0, 'refiner_mode': 'none'}, ValueError, ['aesthetic_score', "'none'"]),
    ({'num_inference_steps': 1}, ValueError, ['num_inference_steps', 'high_noise_frac']),
    ({'num_inference_steps': 2, 'refiner_mode': 'sdedit', 'strength': 0.3}, ValueError,
     ['num_inference_steps', 'strength']),
    ({'original_size': [64]}, TypeError, ['original_size', 'pair']),
    ({'original_size': [0, 64]}, ValueError, ['original_size']),
    ({'crops_coords_top_left': [-1, 0]}, ValueError, ['crops_coords_top_left']),
    ({'target_size': 'big'}, TypeError, ['target_size']),
    ({'clip_skip': 0}, ValueError, ['clip_skip', '>= 1']),
    ({'clip_skip': 99}, ValueError, ['clip_skip', 'between 1 and']),
    ({'prompt_weighting': 'yes'}, TypeError, ['prompt_weighting', 'true or false']),
    ({'callback': 'not callable'}, TypeError, ['callback', 'callable']),
    ({'steps': 10}, ValueError, ["'steps'", 'known parameters', 'num_inference_steps']),
    ({'negative_promt': 'x'}, ValueError, ["'negative_promt'", 'negative_prompt']),
]


@pytest.mark.parametrize('overrides,error,words', BAD_INPUTS, ids=[repr(c[0])[:60] for c in BAD_INPUTS])
def test_bad_input_is_rejected_clearly_and_the_pipeline_keeps_working(sdxl_pipe, overrides, error, words):
    with pytest.raises(error) as caught:
        sdxl_pipe({**GOOD, **overrides})
    message = str(caught.value)
    for word in words:
        assert word in message, f'{word!r} not in {message!r}'
    assert sdxl_pipe(GOOD)['output_imgs'][0].shape == (64, 64, 3)


def test_same_bad_value_as_a_call_parameter_is_rejected_too(sdxl_pipe):
    with pytest.raises(ValueError, match='num_inference_steps'):
        sdxl_pipe({'text': 'a dog'}, num_inference_steps=0)




def test_missing_text(sdxl_pipe):
    with pytest.raises(ValueError, match='text is required'):
        sdxl_pipe({'seed': 1})


def test_input_must_be_a_dict_or_a_string(sdxl_pipe):
    with pytest.raises(TypeError, match='input must be a dict'):
        sdxl_pipe(np.zeros(3))


def test_conflicting_values_in_input_and_call_are_rejected(sdxl_pipe):
    with pytest.raises(ValueError, match='seed is given twice'):
        sdxl_pipe({'text': 'a dog', 'seed': 1}, seed=2)


def test_schema_lists_every_parameter_with_its_limits():
    schema = json_schema()
    assert schema['required'] == ['text'] and schema['additionalProperties'] is False
    assert set(schema['properties']) | {'callback'} == set(known_parameters())
    steps = schema['properties']['num_inference_steps']
    assert (steps['type'], steps['minimum'], steps['maximum'], steps['default']) == ('integer', 1, 1000, 30)
    assert schema['properties']['refiner_mode']['enum'] == ['ensemble', 'sdedit', 'none', 'refiner_only', None]
    assert schema['properties']['strength']['x-refiner-modes'] == ['sdedit', 'refiner_only']
    assert schema['properties']['image']['type'] == ['string', 'null']
    assert schema['properties']['denoising_strength']['x-refiner-modes'] == ['ensemble', 'sdedit', 'none']
    assert schema['properties']['height']['x-stage'] == 'base'
