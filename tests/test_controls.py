"""Every SDXL control matches a plain diffusers run given the same control (within 2/255)."""
import diffusers
import pytest

from conftest import diffusers_images, max_pixel_difference

SCHEDULERS = {
    'euler': (diffusers.EulerDiscreteScheduler, {}),
    'euler_ancestral': (diffusers.EulerAncestralDiscreteScheduler, {}),
    'dpmpp_2m': (diffusers.DPMSolverMultistepScheduler, {'algorithm_type': 'dpmsolver++', 'solver_order': 2}),
    'dpmpp_2m_karras': (diffusers.DPMSolverMultistepScheduler,
                        {'algorithm_type': 'dpmsolver++', 'solver_order': 2, 'use_karras_sigmas': True}),
    'dpmpp_2m_sde_karras': (diffusers.DPMSolverMultistepScheduler,
                            {'algorithm_type': 'sde-dpmsolver++', 'solver_order': 2, 'use_karras_sigmas': True}),
    'ddim': (diffusers.DDIMScheduler, {}),
    'unipc': (diffusers.UniPCMultistepScheduler, {}),
    'heun': (diffusers.HeunDiscreteScheduler, {}),
}


@pytest.mark.parametrize('name', sorted(SCHEDULERS))
@pytest.mark.parametrize('mode', ['ensemble', 'sdedit'])
def test_scheduler_by_name_matches_diffusers(sdxl_pipe, diffusers_pair, name, mode):
    ours = sdxl_pipe({'text': 'a green square', 'seed': 11, 'num_inference_steps': 10, 'scheduler': name,
                      'refiner_mode': mode})['output_imgs']
    reference = diffusers_images(diffusers_pair, mode, 'a green square', 11, scheduler=SCHEDULERS[name])
    assert max_pixel_difference(ours, reference) <= 2


def test_scheduler_choice_does_not_leak_into_the_next_call(sdxl_pipe):
    plain = sdxl_pipe({'text': 'a dog', 'seed': 2, 'num_inference_steps': 10})['output_imgs'][0]
    other = sdxl_pipe({'text': 'a dog', 'seed': 2, 'num_inference_steps': 10,
                       'scheduler': 'euler_ancestral'})['output_imgs'][0]
    again = sdxl_pipe({'text': 'a dog', 'seed': 2, 'num_inference_steps': 10})['output_imgs'][0]
    assert abs(plain.astype(int) - other.astype(int)).max() > 2
    assert (plain == again).all()


CONDITIONING = [
    ({'prompt_2': 'a blue circle', 'negative_prompt': 'dark', 'negative_prompt_2': 'ugly'}, {}),
    ({'guidance_rescale': 0.7}, {}),
    ({'original_size': (32, 48), 'crops_coords_top_left': (8, 4), 'target_size': (64, 40)}, {}),
    ({'negative_original_size': (16, 16), 'negative_crops_coords_top_left': (2, 2),
      'negative_target_size': (24, 24)}, {}),
    ({'clip_skip': 2}, {}),
]


@pytest.mark.parametrize('shared,refiner_only', CONDITIONING, ids=lambda c: ','.join(c) or '-')
@pytest.mark.parametrize('mode', ['ensemble', 'sdedit'])
def test_conditioning_matches_diffusers(sdxl_pipe, diffusers_pair, shared, refiner_only, mode):
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in {**shared, **refiner_only}.items()}
    ours = sdxl_pipe({'text': 'a red circle', 'seed': 21, 'num_inference_steps': 10, 'refiner_mode': mode,
                      **params})['output_imgs']
    reference = diffusers_images(diffusers_pair, mode, 'a red circle', 21, refiner_kwargs=refiner_only, **shared)
    assert max_pixel_difference(ours, reference) <= 2
    plain = sdxl_pipe({'text': 'a red circle', 'seed': 21, 'num_inference_steps': 10,
                       'refiner_mode': mode})['output_imgs']
    assert max_pixel_difference(plain, reference) > 2, 'the control must change the image'


def test_aesthetic_scores_match_diffusers(sdxl_pipe, diffusers_pair):
    scores = {'aesthetic_score': 10.0, 'negative_aesthetic_score': 0.0}
    params = {'text': 'a red circle', 'seed': 21, 'num_inference_steps': 10, 'refiner_mode': 'sdedit',
              'strength': 0.9}
    ours = sdxl_pipe({**params, **scores})['output_imgs']
    reference = diffusers_images(diffusers_pair, 'sdedit', 'a red circle', 21, strength=0.9, refiner_kwargs=scores)
    assert max_pixel_difference(ours, reference) <= 2
    assert max_pixel_difference(sdxl_pipe(params)['output_imgs'], reference) > 2


def test_base_only_conditioning_matches_diffusers(sdxl_pipe, diffusers_pair):
    ours = sdxl_pipe({'text': 'a red circle', 'seed': 4, 'num_inference_steps': 10, 'refiner_mode': 'none',
                      'original_size': [128, 128], 'target_size': [32, 32], 'guidance_rescale': 0.5})['output_imgs']
    reference = diffusers_images(diffusers_pair, 'none', 'a red circle', 4, original_size=(128, 128),
                                 target_size=(32, 32), guidance_rescale=0.5)
    assert max_pixel_difference(ours, reference) <= 2


@pytest.mark.parametrize('ratio,expected', [('1:1', (64, 64)), ('16:9', (48, 88)), ('9:16', (88, 48)),
                                            ('4:1', (32, 128)), ('3:2', (56, 80))])
def test_aspect_ratio_picks_the_nearest_sdxl_bucket(sdxl_pipe, ratio, expected):
    out = sdxl_pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 4, 'aspect_ratio': ratio})
    assert out['output_imgs'][0].shape[:2] == expected
    assert (out['parameters']['height'], out['parameters']['width']) == expected
