"""step_cache: deep UNet features reused on the calls between full ones, per call, off by default."""
import threading

import pytest
import torch

from conftest import diffusers_images, max_pixel_difference
from modelscope_sdxl.stages.step_cache import with_step_cache


def _deep_blocks(unet):
    return list(unet.down_blocks[1:]) + [unet.mid_block] + list(unet.up_blocks[:-1])


class _ReuseWithHooks:
    """An independent reference: forward hooks that replace each deep block's output, on every call
    but one in `interval`, with its output from the last full call (the blocks still compute)."""

    def __init__(self, unet, interval):
        self.calls, self.saved, self.interval = -1, {}, interval
        self.handles = [unet.register_forward_pre_hook(self._count)]
        self.handles += [b.register_forward_hook(self._replace) for b in _deep_blocks(unet)]

    def _count(self, module, args):
        self.calls += 1

    def _replace(self, module, args, output):
        if self.calls % self.interval == 0:
            self.saved[module] = output
            return output
        return self.saved[module]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize('interval', [2, 3])
def test_step_cache_equals_diffusers_with_deep_features_reused(sdxl_pipe, diffusers_pair, interval):
    base = diffusers_pair[0]
    hooks = _ReuseWithHooks(base.unet, interval)
    try:
        reference = diffusers_images(diffusers_pair, 'none', 'a red circle', 3, steps=7)
    finally:
        hooks.remove()
    assert hooks.calls == 6
    ours = sdxl_pipe({'text': 'a red circle', 'seed': 3, 'num_inference_steps': 7, 'refiner_mode': 'none',
                      'step_cache': interval})['output_imgs']
    assert max_pixel_difference(ours, reference) <= 2
    uncached = diffusers_images(diffusers_pair, 'none', 'a red circle', 3, steps=7)
    assert max_pixel_difference(ours, uncached) > 0, 'reusing features must change the image'


@pytest.mark.parametrize('mode', ['ensemble', 'sdedit'])
def test_step_cache_skips_the_deep_blocks_in_each_stage(sdxl_pipe, mode):
    components = sdxl_pipe.model.components
    ran = []
    handles = [getattr(components, stage).unet.mid_block.register_forward_pre_hook(
        lambda module, args, stage=stage: ran.append(stage)) for stage in ('base', 'refiner')]
    try:
        params = {'text': 'a dog', 'seed': 4, 'num_inference_steps': 10, 'refiner_mode': mode, 'step_cache': 2}
        if mode == 'sdedit':
            params['strength'] = 0.4  # 4 refiner steps
        first = sdxl_pipe(params)['output_imgs'][0]
        full_base_steps = ran.count('base')
        refiner_steps = ran.count('refiner')
        second = sdxl_pipe(params)['output_imgs'][0]
    finally:
        for h in handles:
            h.remove()
    # 10 base steps (8 in ensemble) and 2 or 4 refiner steps; each stage's cache starts empty.
    assert full_base_steps == (4 if mode == 'ensemble' else 5) and refiner_steps == 1 + (mode == 'sdedit')
    assert (first == second).all(), 'nothing may carry over from one call to the next'
    for stage in ('base', 'refiner'):
        unet = getattr(components, stage).unet
        assert all(type(b).__name__ != '_CachedBlock' for b in _deep_blocks(unet)), 'the loaded UNet is untouched'


def test_calls_without_step_cache_are_unaffected_by_a_concurrent_cached_call(sdxl_pipe, diffusers_pair):
    reference = diffusers_images(diffusers_pair, 'none', 'a cat', 8, steps=10)
    results, errors = {}, []

    def run(name, step_cache):
        try:
            results[name] = [sdxl_pipe({'text': 'a cat', 'seed': 8, 'num_inference_steps': 10, 'refiner_mode': 'none',
                                        'step_cache': step_cache})['output_imgs'] for _ in range(3)]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=('cached', 3)), threading.Thread(target=run, args=('plain', 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(max_pixel_difference(images, reference) <= 2 for images in results['plain'])
    assert all(max_pixel_difference(images, reference) > 2 for images in results['cached'])


def test_step_cache_uses_the_eager_module_of_a_compiled_unet(diffusers_pair):
    unet = diffusers_pair[0].unet
    clone = with_step_cache(torch.compile(unet), 2)
    assert clone.mid_block.block is unet.mid_block and clone.conv_in is unet.conv_in
    assert with_step_cache(unet, 1) is unet


@pytest.mark.parametrize('value,error,message', [
    (0, ValueError, 'step_cache must be an integer >= 1 and <= 10, got 0'),
    (11, ValueError, 'step_cache must be an integer >= 1 and <= 10, got 11'),
    (1.5, TypeError, 'step_cache must be an integer >= 1 and <= 10, got 1.5'),
    ('2', TypeError, "step_cache must be an integer >= 1 and <= 10, got str '2'"),
    (True, TypeError, 'step_cache must be an integer >= 1 and <= 10, got bool True'),
])
def test_step_cache_is_validated(sdxl_pipe, value, error, message):
    with pytest.raises(error) as info:
        sdxl_pipe({'text': 'a dog', 'step_cache': value})
    assert str(info.value) == message
