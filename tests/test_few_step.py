"""Few-step samplers equal plain diffusers with the same scheduler, and guidance <= 1 costs one UNet pass a step."""
import diffusers
import pytest

from conftest import diffusers_images, max_pixel_difference

FEW_STEP = {
    'lcm': (diffusers.LCMScheduler, {}),
    'tcd': (diffusers.TCDScheduler, {}),
    'euler_trailing': (diffusers.EulerDiscreteScheduler, {'timestep_spacing': 'trailing'}),
    'euler_ancestral_trailing': (diffusers.EulerAncestralDiscreteScheduler, {'timestep_spacing': 'trailing'}),
}


@pytest.mark.parametrize('name', sorted(FEW_STEP))
@pytest.mark.parametrize('mode,steps,guidance', [('none', 4, 0.0), ('ensemble', 4, 1.0), ('sdedit', 8, 1.5)])
def test_few_step_sampler_matches_diffusers(sdxl_pipe, diffusers_pair, name, mode, steps, guidance):
    params = {'text': 'a green square', 'seed': 5, 'num_inference_steps': steps, 'scheduler': name,
              'refiner_mode': mode, 'guidance_scale': guidance}
    if mode == 'ensemble':
        params['high_noise_frac'] = 0.5
    ours = sdxl_pipe(params)['output_imgs']
    reference = diffusers_images(diffusers_pair, mode, 'a green square', 5, steps=steps, scheduler=FEW_STEP[name],
                                 guidance_scale=guidance, high_noise_frac=0.5, strength=0.3)
    assert max_pixel_difference(ours, reference) <= 2
    default = sdxl_pipe({k: v for k, v in params.items() if k != 'scheduler'})['output_imgs']
    assert max_pixel_difference(default, reference) > 2, 'the sampler must change the image'


def test_trailing_spacing_starts_at_the_last_training_timestep(sdxl_pipe):
    """What SDXL-Lightning and Turbo rely on: the first step is at t=999, not 'leading' spacing's 751."""
    from modelscope_sdxl.schedulers import make_scheduler

    model_scheduler = sdxl_pipe.model.components.base.scheduler
    for name in ('euler_trailing', 'euler_ancestral_trailing'):
        scheduler = make_scheduler(model_scheduler, name)
        scheduler.set_timesteps(4)
        assert [int(t) for t in scheduler.timesteps] == [999, 749, 499, 249]
    leading = make_scheduler(model_scheduler, 'euler')
    leading.set_timesteps(4)
    assert int(leading.timesteps[0]) < 999


def _count_unet_calls(pipe):
    """Forward pre-hooks on both UNets recording each call's batch size; returns (calls, remove)."""
    calls = []
    components = pipe.model.components
    handles = [getattr(components, stage).unet.register_forward_pre_hook(
        lambda module, args, kwargs, stage=stage: calls.append((stage, kwargs.get('sample', args[0] if args else None)
                                                                .shape[0])), with_kwargs=True)
               for stage in ('base', 'refiner')]
    return calls, lambda: [h.remove() for h in handles]


@pytest.mark.parametrize('guidance,passes', [(0.0, 1), (1.0, 1), (1.5, 2)])
def test_guidance_at_most_one_runs_one_unet_pass_per_step(sdxl_pipe, guidance, passes):
    calls, remove = _count_unet_calls(sdxl_pipe)
    try:
        sdxl_pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 4, 'guidance_scale': guidance,
                   'high_noise_frac': 0.5, 'scheduler': 'euler_trailing'})
    finally:
        remove()
    # One UNet call per step; with guidance the conditional and unconditional halves go in one batch.
    assert calls == [('base', passes), ('base', passes), ('refiner', passes), ('refiner', passes)]
