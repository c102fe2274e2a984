"""Shared fixtures: the tiny offline SDXL pair, our pipeline on it, and plain diffusers on the same folders."""

import os

import numpy as np
import pytest
import torch

import modelscope_sdxl  # noqa: F401  (registers the model and pipeline)
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.mini.sdxl_folders import build_tiny_sdxl

# The tiny networks are far too small to gain from threads; on a small machine shared with other
# work, torch's worker threads only spin against each other. Ours and the diffusers reference both
# run in this process, so comparisons are unaffected.
torch.set_num_threads(1)
# The command line sets torch's threads to the CPUs it may use (cli/threads.py); in tests, in this
# process and in the commands it starts, one thread, for the same reason.
os.environ.setdefault('MODELSCOPE_SDXL_THREADS', '1')


@pytest.fixture(scope='session')
def tiny_sdxl(tmp_path_factory):
    """(base_dir, refiner_dir) of the tiny random-weight pair, built once per session."""
    return build_tiny_sdxl(str(tmp_path_factory.mktemp('tiny-sdxl')))


@pytest.fixture(scope='session')
def sdxl_pipe(tiny_sdxl):
    """Our pipeline built by the model card's call, shared by tests that do not change it."""
    return pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], model_revision='v1.0.0',
                    device='cpu')


@pytest.fixture(scope='session')
def diffusers_pair(tiny_sdxl):
    """Plain diffusers, written the way its docs teach: the refiner shares text_encoder_2 and the VAE."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl[0], use_safetensors=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl[1], text_encoder_2=base.text_encoder_2, vae=base.vae, use_safetensors=True)
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
    return base, refiner


def diffusers_images(pair, mode, prompt, seed, steps=10, num_images_per_prompt=1, high_noise_frac=0.8,
                     strength=0.3, height=None, width=None, scheduler=None, refiner_kwargs=None, **shared):
    """The reference: a plain diffusers base (+ refiner) run; returns RGB uint8 arrays.

    `shared` keyword arguments go to both stages' __call__, `refiner_kwargs` to the refiner's only;
    `scheduler` is (diffusers class, config overrides) set on both pipelines for this run.
    """
    base, refiner = pair
    saved = base.scheduler, refiner.scheduler
    if scheduler is not None:
        cls, overrides = scheduler
        base.scheduler = cls.from_config(base.scheduler.config, **overrides)
        refiner.scheduler = cls.from_config(refiner.scheduler.config, **overrides)
    try:
        # diffusers' list of generators: image i has its own, seeded seed + i.
        generator = [torch.Generator('cpu').manual_seed(seed + i) for i in range(num_images_per_prompt)]
        common = dict(prompt=prompt, num_inference_steps=steps, num_images_per_prompt=num_images_per_prompt,
                      generator=generator, **shared)
        if mode == 'none':
            images = base(**common, height=height, width=width, output_type='np').images
        else:
            split = {'denoising_end': high_noise_frac} if mode == 'ensemble' else {}
            latents = base(**common, height=height, width=width, output_type='latent', **split).images
            split = {'denoising_start': high_noise_frac} if mode == 'ensemble' else {'strength': strength}
            images = refiner(**common, image=latents, output_type='np', **split, **(refiner_kwargs or {})).images
    finally:
        base.scheduler, refiner.scheduler = saved
    return [(img * 255).round().astype(np.uint8) for img in images]


def assert_concurrent_equals_sequential(run, calls):
    """Every call of `calls`, run twice over on as many threads, returns exactly what it returns alone."""
    from concurrent.futures import ThreadPoolExecutor

    sequential = [run(c) for c in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        concurrent = list(pool.map(run, list(calls) * 2))
    for i, images in enumerate(concurrent):
        expected = sequential[i % len(calls)]
        assert len(images) == len(expected)
        for got, want in zip(images, expected):
            assert np.array_equal(got, want), f'call {i} ({calls[i % len(calls)]}) differs when run concurrently'


def max_pixel_difference(bgr_images, rgb_images):
    assert len(bgr_images) == len(rgb_images)
    return max(int(np.abs(b[:, :, ::-1].astype(int) - r.astype(int)).max())
               for b, r in zip(bgr_images, rgb_images))
