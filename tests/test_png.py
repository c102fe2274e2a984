"""PNG files carry their parameters: exact JSON, AUTOMATIC1111 text, and an ordinary file mode."""
import os
import stat

import cv2
import numpy as np
import pytest

from modelscope_sdxl.cli.png import a1111_text, parse_a1111_text, read_png_parameters, save_png

PARAMS = {'text': 'a red circle', 'negative_prompt': 'blurry', 'num_inference_steps': 30, 'guidance_scale': 5.0,
          'seed': 123, 'height': 64, 'width': 80, 'refiner_mode': 'ensemble', 'high_noise_frac': 0.8,
          'scheduler': 'dpmpp_2m_karras', 'original_size': [64, 80]}


def test_round_trip_keeps_pixels_and_exact_parameters(tmp_path):
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    path = str(tmp_path / 'out.png')
    save_png(path, image, PARAMS, {'model': 'tiny'})
    assert np.array_equal(cv2.imread(path), image)
    assert read_png_parameters(path) == {**PARAMS, 'model': 'tiny'}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert [f for f in os.listdir(tmp_path) if f.startswith('.tmp-')] == []


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a1111_text_reads_back():
    text = a1111_text(PARAMS)
    assert text.splitlines()[:2] == ['a red circle', 'Negative prompt: blurry']
    back = parse_a1111_text(text)
    for key in ('text', 'negative_prompt', 'num_inference_steps', 'guidance_scale', 'seed', 'height', 'width',
                'scheduler', 'refiner_mode', 'high_noise_frac'):
        assert back[key] == PARAMS[key], key


@pytest.mark.parametrize('sampler,ours', [('Euler a', 'euler_ancestral'), ('DPM++ 2M SDE Karras', 'dpmpp_2m_sde_karras'),
                                          ('UniPC', 'unipc')])
def test_automatic1111_sampler_names_map_to_ours(sampler, ours):
    params = parse_a1111_text(f'a dog\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 5, Size: 1024x768')
    assert params == {'text': 'a dog', 'num_inference_steps': 20, 'scheduler': ours, 'guidance_scale': 7, 'seed': 5,
                      'width': 1024, 'height': 768}


def test_a_png_without_parameters_is_refused(tmp_path):
    path = str(tmp_path / 'plain.png')
    cv2.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='carries no generation parameters'):
        read_png_parameters(path)
