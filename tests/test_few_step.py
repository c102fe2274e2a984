"""Few-step samplers equal plain diffusers with the same scheduler, and guidance <= 1 costs one UNet pass a step."""
import os

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
    from modelscope_sdxl.stages.schedulers import make_scheduler

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


def test_lcm_lora_recipe_matches_diffusers_lcm_lora_run(tiny_sdxl, tmp_path):
    """docs/few-step.md's LCM-LoRA recipe (a LoRA fused into the base, 'lcm', 4 steps, guidance 1, no refiner)
    equals diffusers' own LCM-LoRA usage: load_lora_weights, LCMScheduler from the model's config."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks
    from test_lora import make_lora

    lora = make_lora(UNet2DConditionModel.from_pretrained(os.path.join(tiny_sdxl[0], 'unet')), str(tmp_path), 3)
    params = {'text': 'a blue square', 'seed': 9, 'num_inference_steps': 4, 'guidance_scale': 1.0}
    ours = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', lora=lora)(
        {**params, 'scheduler': 'lcm', 'refiner_mode': 'none'})['output_imgs']
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl[0], use_safetensors=True)
    base.set_progress_bar_config(disable=True)
    base.load_lora_weights(str(tmp_path), weight_name=os.path.basename(lora))
    base.scheduler = diffusers.LCMScheduler.from_config(base.scheduler.config)
    # mode 'none' runs the base only (the pair's second pipeline is not used)
    reference = diffusers_images((base, base), 'none', 'a blue square', 9, steps=4, guidance_scale=1.0)
    assert max_pixel_difference(ours, reference) <= 2
    base.unload_lora_weights()
    without_lora = diffusers_images((base, base), 'none', 'a blue square', 9, steps=4, guidance_scale=1.0)
    assert max_pixel_difference(ours, without_lora) > 2, 'the LoRA must change the image'
