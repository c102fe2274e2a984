"""The caller's own picture: every refiner mode with an image and with a mask equals plain diffusers
(within 2/255), pictures arrive in every accepted form, and bad pictures are refused before any work."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl.inputs.images import load_picture
from modelscope_sdxl.mini.scenes import Scene, render
from modelscope_sdxl.parameters import validate

from conftest import assert_concurrent_equals_sequential, max_pixel_difference

MODES = ['none', 'sdedit', 'ensemble', 'refiner_only']


def scene_bgr(colour='red', background='blue', shape='circle', size=64):
    rgb = (render([Scene(colour, shape, background)], size=size, jitter=False)[0] * 255).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def centre_mask(size=64, low=16, high=48):
    mask = np.zeros((size, size), np.uint8)
    mask[low:high, low:high] = 255
    return mask


def png_base64(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode('ascii')


def reference(pair, mode, prompt, seed, image_bgr, mask=None, steps=10, num_images=1, denoising_strength=None,
              strength=0.3, high_noise_frac=0.8, **shared):
    """Plain diffusers: from_pipe of the base (img2img or inpainting), the refiner's img2img, or its
    inpainting as diffusers' SDXL guide shows; RGB uint8 arrays."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    base, refiner = pair
    image = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    generator = [torch.Generator('cpu').manual_seed(seed + i) for i in range(num_images)]
    # Our guidance_scale default (5.0) holds with a mask too (diffusers' inpainting would use 7.5).
    common = dict(prompt=prompt, num_inference_steps=steps, num_images_per_prompt=num_images, generator=generator,
                  **{'guidance_scale': 5.0, **shared})
    if mask is None:
        base_pipe, refiner_pipe, extra = StableDiffusionXLImg2ImgPipeline.from_pipe(base), refiner, {}
        denoising_strength = denoising_strength or 0.75
    else:
        base_pipe = StableDiffusionXLInpaintPipeline.from_pipe(base)
        refiner_pipe = StableDiffusionXLInpaintPipeline.from_pipe(refiner)
        extra = dict(mask_image=Image.fromarray(mask), height=image.height // 8 * 8, width=image.width // 8 * 8)
        denoising_strength = denoising_strength or 0.9999
    for p in (base_pipe, refiner_pipe):
        p.set_progress_bar_config(disable=True)
    if mode == 'refiner_only':
        images = refiner_pipe(**common, image=image, strength=strength, output_type='np', **extra).images
    elif mode == 'none':
        images = base_pipe(**common, image=image, strength=denoising_strength, output_type='np', **extra).images
    else:
        split = {'denoising_end': high_noise_frac} if mode == 'ensemble' else {}
        latents = base_pipe(**common, image=image, strength=denoising_strength, output_type='latent', **split,
                            **extra).images
        split = {'denoising_start': high_noise_frac} if mode == 'ensemble' else {'strength': strength}
        images = refiner_pipe(**common, image=latents, output_type='np', **split, **extra).images
    return [(img * 255).round().astype(np.uint8) for img in images]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('masked', [False, True], ids=['img2img', 'inpaint'])
def test_every_mode_with_a_picture_matches_plain_diffusers(sdxl_pipe, diffusers_pair, mode, masked):
    image, mask = scene_bgr(), centre_mask() if masked else None
    params = {'text': 'a green square on a white background', 'seed': 31, 'num_inference_steps': 10,
              'refiner_mode': mode, 'num_images_per_prompt': 2, 'image': image}
    if masked:
        params['mask_image'] = mask
    output = sdxl_pipe(params)
    ours = output['output_imgs']
    expected = reference(diffusers_pair, mode, params['text'], 31, image, mask, num_images=2)
    assert [o.shape for o in ours] == [(64, 64, 3)] * 2
    assert max_pixel_difference(ours, expected) <= 2
    assert output['seeds'] == [31, 32]
    # The picture really shaped the result: the same call from another picture differs.
    other = sdxl_pipe({**params, 'image': scene_bgr('yellow', 'black', 'square')})['output_imgs']
    assert np.abs(other[0].astype(int) - ours[0].astype(int)).max() > 2


@pytest.mark.parametrize('mode,extra', [
    ('none', {'denoising_strength': 0.5}), ('sdedit', {'denoising_strength': 0.6, 'strength': 0.5}),
    ('ensemble', {'denoising_strength': 0.9, 'high_noise_frac': 0.6}), ('refiner_only', {'strength': 0.7})])
def test_strengths_match_diffusers(sdxl_pipe, diffusers_pair, mode, extra):
    image = scene_bgr('purple', 'yellow', 'triangle')
    ours = sdxl_pipe({'text': 'a cat', 'seed': 4, 'num_inference_steps': 12, 'refiner_mode': mode,
                      'guidance_scale': 7.5, 'image': image, **extra})['output_imgs']
    expected = reference(diffusers_pair, mode, 'a cat', 4, image, steps=12, guidance_scale=7.5, **extra)
    assert max_pixel_difference(ours, expected) <= 2


def test_a_size_that_is_not_a_multiple_of_8_is_rounded_down_like_diffusers(sdxl_pipe, diffusers_pair):
    image = np.ascontiguousarray(scene_bgr(size=80)[:53, :75])
    mask = centre_mask(80)[:53, :75]
    for mode, m in (('sdedit', None), ('ensemble', mask)):
        output = sdxl_pipe({'text': 'a dog', 'seed': 2, 'num_inference_steps': 8, 'image': image, 'mask_image': m,
                            'refiner_mode': mode})
        assert output['output_imgs'][0].shape == (48, 72, 3)
        assert 'height' not in output['parameters']  # the image's, not a parameter of its own
        expected = reference(diffusers_pair, mode, 'a dog', 2, image, m, steps=8)
        assert max_pixel_difference(output['output_imgs'], expected) <= 2


def test_every_form_of_a_picture_gives_the_same_image(sdxl_pipe, tmp_path):
    image, mask = scene_bgr(), centre_mask()
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    Image.fromarray(rgb).save(tmp_path / 'in.png')
    Image.fromarray(mask).save(tmp_path / 'mask.png')
    call = {'text': 'a dog', 'seed': 3, 'num_inference_steps': 6, 'refiner_mode': 'sdedit'}
    want = sdxl_pipe({**call, 'image': image, 'mask_image': mask})['output_imgs'][0]
    forms = [
        (str(tmp_path / 'in.png'), str(tmp_path / 'mask.png')),
        (Image.fromarray(rgb), Image.fromarray(mask)),
        (png_base64(rgb), png_base64(mask)),
        ('data:image/png;base64,' + png_base64(rgb), np.repeat(mask[:, :, None], 3, axis=2)),
    ]
    for picture, mask_form in forms:
        got = sdxl_pipe({**call, 'image': picture, 'mask_image': mask_form})['output_imgs'][0]
        assert np.array_equal(got, want)
    # As call keywords (how `modelscope server` passes "parameters").
    assert np.array_equal(sdxl_pipe({'text': 'a dog'}, **{k: v for k, v in call.items() if k != 'text'},
                                    image=png_base64(rgb), mask_image=png_base64(mask))['output_imgs'][0], want)


def test_a_jpeg_in_base64_is_read():
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(buffer, format='JPEG')
    picture = load_picture('image', base64.b64encode(buffer.getvalue()).decode(), 4096)
    assert picture.pixels.shape == (16, 24, 3) and abs(int(picture.pixels[8, 8, 0]) - 200) <= 3


def test_the_output_parameters_make_the_image_again_with_the_same_picture(sdxl_pipe):
    image = scene_bgr()
    first = sdxl_pipe({'text': 'a dog', 'num_inference_steps': 6, 'image': image, 'mask_image': centre_mask()})
    assert 'image' not in first['parameters'] and 'mask_image' not in first['parameters']
    assert first['parameters']['denoising_strength'] == 0.9999
    again = sdxl_pipe({**first['parameters'], 'image': image, 'mask_image': centre_mask()})
    assert np.array_equal(again['output_imgs'][0], first['output_imgs'][0])
    text_only = sdxl_pipe({'text': 'a dog', 'num_inference_steps': 4})['parameters']
    assert 'denoising_strength' not in text_only


def _oversized_png():
    buffer = io.BytesIO()
    Image.new('L', (5000, 8)).save(buffer, format='PNG')
    return base64.b64encode(buffer.getvalue()).decode()


# (input, error type, parts of the message)
BAD = [
    ({'image': np.zeros((64, 64, 3), np.float32)}, TypeError, ['image', 'uint8', 'float32']),
    ({'image': np.zeros((64, 64, 4), np.uint8)}, ValueError, ['image', 'H x W x 3', '(64, 64, 4)']),
    ({'image': np.zeros((64, 64), np.uint8)}, ValueError, ['image', 'H x W x 3', '(64, 64)']),
    ({'image': np.zeros((0, 64, 3), np.uint8)}, ValueError, ['image', 'empty']),
    ({'image': np.zeros((4100, 8, 3), np.uint8)}, ValueError, ['image', 'at most 4096', '4100x8']),
    ({'image': _oversized_png()}, ValueError, ['image', 'at most 4096', '8x5000']),
    ({'image': np.zeros((4, 64, 3), np.uint8)}, ValueError, ['image', 'at least 8 pixels', '4x64']),
    ({'image': '/no/such/picture.png'}, ValueError, ['image', 'no such file', '/no/such/picture.png']),
    ({'image': 'data:image/png;base64,AAAA'}, ValueError, ['image', 'data URL']),
    ({'image': base64.b64encode(b'\x89PNG\r\n\x1a\n' + b'junk' * 10).decode()}, ValueError,
     ['image', 'not a readable PNG or JPEG']),
    ({'image': 12}, TypeError, ['image', 'BGR uint8 array', 'int']),
    ({'image': ''}, ValueError, ['image', 'empty string']),
    ({'mask_image': np.zeros((64, 64), np.uint8)}, ValueError, ['mask_image needs an image']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'mask_image': np.zeros((64, 32), np.uint8)}, ValueError,
     ['mask_image is 64x32', 'image is 64x64']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'mask_image': np.zeros((64, 64, 2), np.uint8)}, ValueError,
     ['mask_image', 'H x W or H x W x 3']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'height': 64}, ValueError,
     ['height cannot be given with an image', "image's size"]),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'aspect_ratio': '1:1'}, ValueError, ['aspect_ratio cannot be given']),
    ({'denoising_strength': 0.5}, ValueError, ['denoising_strength applies only with an image']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'denoising_strength': 0}, ValueError, ['denoising_strength', '> 0']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'denoising_strength': 1.5}, ValueError,
     ['denoising_strength', '<= 1']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'denoising_strength': 0.05, 'refiner_mode': 'none'}, ValueError,
     ['denoising_strength=0.05', 'gives the base no step']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'denoising_strength': 0.2, 'refiner_mode': 'ensemble'}, ValueError,
     ['high_noise_frac=0.8', 'gives the base no step']),
    ({'refiner_mode': 'refiner_only'}, ValueError, ["refiner_mode='refiner_only'", 'give image']),
    ({'image': np.zeros((64, 64, 3), np.uint8), 'refiner_mode': 'refiner_only', 'denoising_strength': 0.5},
     ValueError, ["denoising_strength applies only to refiner_mode='ensemble' or 'sdedit' or 'none'"]),
]


@pytest.mark.parametrize('params,error,parts', BAD, ids=range(len(BAD)))
def test_bad_pictures_are_refused_before_any_model_work(sdxl_pipe, params, error, parts, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError('the model ran for a bad input')

    monkeypatch.setattr(sdxl_pipe.model, 'forward', no_work)
    with pytest.raises(error) as caught:
        sdxl_pipe({'text': 'a dog', 'num_inference_steps': 10, **params})
    for part in parts:
        assert part in str(caught.value), (part, str(caught.value))


def test_refiner_only_needs_a_refiner(tiny_sdxl):
    from modelscope_sdxl.parameters import ModelLimits

    limits = ModelLimits(default_size=64, size_multiple=8, has_refiner=False)
    with pytest.raises(ValueError, match="refiner_mode='refiner_only' needs a refiner"):
        validate({'text': 'a', 'image': np.zeros((64, 64, 3), np.uint8), 'refiner_mode': 'refiner_only'}, limits)


def test_an_unreadable_file_names_the_field(tmp_path):
    path = tmp_path / 'broken.png'
    path.write_bytes(b'not a picture at all')
    with pytest.raises(ValueError, match=r"image: the file .*broken.png' is not a readable PNG or JPEG"):
        load_picture('image', str(path), 4096)


# ------------------------------------------------------------------------------------------------
IMAGE_CALLS = [
    {'text': 'a dog', 'seed': 1, 'refiner_mode': 'none'},
    {'text': 'a cat', 'seed': 2, 'refiner_mode': 'sdedit', 'mask': True, 'num_images_per_prompt': 2},
    {'text': 'a boat', 'seed': 3, 'refiner_mode': 'ensemble', 'scheduler': 'dpmpp_2m'},
    {'text': 'a tree', 'seed': 4, 'refiner_mode': 'refiner_only', 'mask': True},
    {'text': 'a moon', 'seed': 5, 'refiner_mode': 'refiner_only', 'strength': 0.6},
    {'text': 'a sun', 'seed': 6},  # text only, alongside
]


def _run(pipe, call):
    params = {'num_inference_steps': 8, **{k: v for k, v in call.items() if k != 'mask'}}
    if call['text'] != 'a sun':
        params['image'] = scene_bgr()
    if call.get('mask'):
        params['mask_image'] = centre_mask()
    return pipe(params)['output_imgs']


def test_concurrent_picture_calls_equal_their_sequential_results(sdxl_pipe):
    assert_concurrent_equals_sequential(lambda c: _run(sdxl_pipe, c), IMAGE_CALLS)


def test_lean_memory_mode_gives_the_resident_picture_results(sdxl_pipe, tiny_sdxl):
    lean = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', memory_mode='lean')
    assert lean.model.components.memory_mode == 'lean'
    for call in IMAGE_CALLS[:5]:
        for got, want in zip(_run(lean, call), _run(sdxl_pipe, call)):
            assert np.array_equal(got, want), call
    components = lean.model.components
    assert components.base.unet is None and components.refiner.unet is None
    assert next(components.base.vae.parameters()).dtype == torch.float32


def test_a_picture_given_twice_must_be_the_same(sdxl_pipe, monkeypatch):
    monkeypatch.setattr(sdxl_pipe.model, 'forward', lambda *a, **k: (_ for _ in ()).throw(AssertionError('ran')))
    image = scene_bgr()
    with pytest.raises(ValueError, match=r'image is given twice with different values: ndarray of shape '
                                         r'\(64, 64, 3\) in the input and ndarray of shape \(64, 64, 3\)'):
        sdxl_pipe({'text': 'a dog', 'image': image}, image=scene_bgr('yellow'))


def test_the_shared_vae_keeps_its_dtype_after_a_picture_is_encoded(tiny_sdxl, monkeypatch):
    """On CUDA diffusers' img2img / inpainting encoders cast an upcast VAE back to the UNet's fp16
    (``self.vae.to(dtype)``); the VAE every call shares must stay as loaded (fp32, weights unrounded)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu')
    vae = pipe.model.components.base.vae
    weights = {k: v.clone() for k, v in vae.state_dict().items()}
    calls = [{'text': 'a dog', 'seed': 1, 'num_inference_steps': 6, 'refiner_mode': mode, 'image': scene_bgr(),
              **({'mask_image': centre_mask()} if masked else {})}
             for mode in ('none', 'refiner_only') for masked in (False, True)]
    expected = [pipe(params)['output_imgs'][0] for params in calls]
    for cls, method in ((StableDiffusionXLImg2ImgPipeline, 'prepare_latents'),
                        (StableDiffusionXLInpaintPipeline, '_encode_vae_image')):
        real = getattr(cls, method)

        def encode_then_cast(self, *args, _real=real, **kwargs):  # what diffusers does with an fp16 UNet
            result = _real(self, *args, **kwargs)
            self.vae.to(torch.float16)
            return result

        monkeypatch.setattr(cls, method, encode_then_cast)
    for params, want in zip(calls, expected):
        assert np.array_equal(pipe(params)['output_imgs'][0], want)
    assert all(torch.equal(v, weights[k]) for k, v in vae.state_dict().items())
