"""Each refiner mode equals a plain diffusers run on the same folders, parameters and seed (within 2/255)."""
import pytest

from conftest import diffusers_images, max_pixel_difference


@pytest.mark.parametrize('mode', ['ensemble', 'sdedit', 'none'])
@pytest.mark.parametrize('negative_prompt', [None, 'blurry, low quality'])
@pytest.mark.parametrize('num_images', [1, 3])
def test_matches_plain_diffusers(sdxl_pipe, diffusers_pair, mode, negative_prompt, num_images):
    params = {'text': 'a red circle on a blue background', 'seed': 1234, 'num_inference_steps': 10,
              'refiner_mode': mode, 'num_images_per_prompt': num_images}
    if negative_prompt is not None:
        params['negative_prompt'] = negative_prompt
    ours = sdxl_pipe(params)['output_imgs']
    reference = diffusers_images(diffusers_pair, mode, params['text'], 1234, negative_prompt=negative_prompt,
                                 num_images_per_prompt=num_images)
    assert len(ours) == num_images
    assert max_pixel_difference(ours, reference) <= 2


@pytest.mark.parametrize('mode,extra', [('ensemble', {'high_noise_frac': 0.6}), ('sdedit', {'strength': 0.55})])
def test_stage_split_parameters_match_diffusers(sdxl_pipe, diffusers_pair, mode, extra):
    ours = sdxl_pipe({'text': 'a dog', 'seed': 7, 'num_inference_steps': 12, 'refiner_mode': mode,
                      'guidance_scale': 7.5, **extra})['output_imgs']
    reference = diffusers_images(diffusers_pair, mode, 'a dog', 7, steps=12, guidance_scale=7.5, **extra)
    assert max_pixel_difference(ours, reference) <= 2


def test_guidance_off_and_non_square_size_match_diffusers(sdxl_pipe, diffusers_pair):
    ours = sdxl_pipe({'text': 'a cat'}, seed=3, num_inference_steps=8, guidance_scale=1.0,
                     height=48, width=80)['output_imgs']
    reference = diffusers_images(diffusers_pair, 'ensemble', 'a cat', 3, steps=8, guidance_scale=1.0,
                                 height=48, width=80)
    assert ours[0].shape == (48, 80, 3)
    assert max_pixel_difference(ours, reference) <= 2


def test_modes_really_differ(sdxl_pipe):
    """The fidelity tests above could not tell the modes apart if the refiner did nothing."""
    images = {mode: sdxl_pipe({'text': 'a dog', 'seed': 5, 'num_inference_steps': 10,
                               'refiner_mode': mode})['output_imgs'][0].astype(int)
              for mode in ('ensemble', 'sdedit', 'none')}
    assert abs(images['ensemble'] - images['none']).max() > 2
    assert abs(images['sdedit'] - images['none']).max() > 2
    assert abs(images['ensemble'] - images['sdedit']).max() > 2
