"""LoRA: fused at construction, scaled, scale 0 gives the plain image, and equal to diffusers' own LoRA run."""
import os

import pytest
import torch

from conftest import diffusers_images, max_pixel_difference
from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks

PARAMS = {'text': 'a red circle', 'seed': 5, 'num_inference_steps': 10}


def make_lora(unet, folder, seed, file_name='pytorch_lora_weights.safetensors'):
    """A random LoRA for `unet` saved as diffusers saves trained LoRAs."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']), adapter_name='tmp')
    state = get_peft_model_state_dict(unet, adapter_name='tmp')
    unet.delete_adapters('tmp')
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=file_name,
                                                safe_serialization=True)
    return os.path.join(folder, file_name)


@pytest.fixture(scope='module')
def lora_files(tiny_sdxl, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp('lora')
    base_unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_sdxl[0], 'unet'))
    refiner_unet = UNet2DConditionModel.from_pretrained(os.path.join(tiny_sdxl[1], 'unet'))
    return {'base': make_lora(base_unet, str(folder), 1, 'base_lora.safetensors'),
            'refiner': make_lora(refiner_unet, str(folder), 2, 'refiner_lora.safetensors')}


def build(tiny_sdxl, lora):
    return pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', lora=lora)


def test_scale_changes_the_image_and_zero_gives_the_plain_image(tiny_sdxl, lora_files, sdxl_pipe):
    plain = sdxl_pipe(PARAMS)['output_imgs']
    zero = build(tiny_sdxl, [(lora_files['base'], 0.0)])(PARAMS)['output_imgs']
    half = build(tiny_sdxl, [(lora_files['base'], 0.5)])(PARAMS)['output_imgs']
    full = build(tiny_sdxl, {'path': lora_files['base'], 'scale': 1.0})(PARAMS)['output_imgs']
    assert max_pixel_difference(zero, [img[:, :, ::-1] for img in plain]) == 0
    assert max_pixel_difference(half, [img[:, :, ::-1] for img in plain]) > 2
    assert max_pixel_difference(full, [img[:, :, ::-1] for img in half]) > 2


def test_lora_matches_diffusers_own_lora_run(tiny_sdxl, lora_files):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    ours = build(tiny_sdxl, [{'path': lora_files['base'], 'scale': 0.7},
                             {'path': lora_files['refiner'], 'scale': 0.9, 'target': 'refiner'}])(PARAMS)
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl[0], use_safetensors=True)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_sdxl[1], text_encoder_2=base.text_encoder_2, vae=base.vae, use_safetensors=True)
    for pipe, key, scale in ((base, 'base', 0.7), (refiner, 'refiner', 0.9)):
        folder, name = os.path.split(lora_files[key])
        pipe.load_lora_weights(folder, weight_name=name, adapter_name=key)
        pipe.set_adapters([key], adapter_weights=[scale])
        pipe.set_progress_bar_config(disable=True)
    reference = diffusers_images((base, refiner), 'ensemble', PARAMS['text'], PARAMS['seed'])
    assert max_pixel_difference(ours['output_imgs'], reference) <= 2


@pytest.mark.parametrize('lora,error,words', [
    (42, TypeError, ['lora']),
    ([{'path': 'x.safetensors', 'scale': 'big'}], TypeError, ['lora[0].scale']),
    ([{'path': 'x.safetensors', 'target': 'vae'}], ValueError, ['lora[0].target', "'refiner'"]),
    ([{'path': 'x.safetensors', 'weight': 1}], ValueError, ['lora[0]', 'weight']),
])
def test_bad_lora_arguments_are_rejected(tiny_sdxl, lora, error, words):
    with pytest.raises(error) as caught:
        build(tiny_sdxl, lora)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_pickle_lora_is_refused(tiny_sdxl, tmp_path):
    bad = tmp_path / 'lora.bin'
    bad.write_bytes(b'not read')
    with pytest.raises(ValueError, match='pickle'):
        build(tiny_sdxl, str(bad))


def test_lora_for_another_model_is_refused(tiny_sdxl, lora_files):
    with pytest.raises(ValueError, match='does not fit the base model'):
        build(tiny_sdxl, {'path': lora_files['refiner'], 'target': 'base'})


@pytest.mark.parametrize('path', ['missing.safetensors', 'loras/missing.safetensors', './missing', 'a/b/c',
                                  '~/no-such-lora-folder'])
def test_a_local_lora_path_that_does_not_exist_is_never_sent_to_the_hub(tiny_sdxl, monkeypatch, path):
    import modelscope_sdxl.loading.lora as lora

    asked = []
    monkeypatch.setattr(lora, 'resolve_folder', lambda *args, **kwargs: asked.append(args))
    with pytest.raises(FileNotFoundError) as info:
        pipeline(task=Tasks.text_to_image_synthesis, model=tiny_sdxl[0], device='cpu', lora=[(path, 0.5)])
    message = str(info.value)
    assert f'lora[0].path {path!r}: no such file or folder' in message
    assert os.path.abspath(os.path.expanduser(path)) in message and "'owner/name'" in message
    assert asked == []


@pytest.mark.parametrize('ref,hub', [('owner/style-lora', True), ('Owner_1/name.v2', True),
                                     ('owner/x.safetensors', False), ('x.safetensors', False), ('a/b/c', False),
                                     ('./owner/name', False), ('/abs/owner', False), ('~/x', False)])
def test_only_owner_name_ids_are_hub_ids(ref, hub):
    from modelscope_sdxl.loading.lora import is_hub_id

    assert is_hub_id(ref) is hub


def test_a_hub_id_goes_to_the_hub_and_a_local_folder_does_not(tmp_path, lora_files, monkeypatch):
    import shutil

    import modelscope_sdxl.loading.lora as lora

    asked = []
    served = tmp_path / 'served'
    served.mkdir()
    shutil.copy(lora_files['base'], served / 'base_lora.safetensors')
    monkeypatch.setattr(lora, 'resolve_folder', lambda ref, *args, **kwargs: asked.append(ref) or str(served))
    spec = lora.parse_lora('owner/style-lora')[0]
    assert lora._locate(spec, allow_pickle=False) == (str(served), 'base_lora.safetensors')
    assert asked == ['owner/style-lora']
    assert lora._locate(lora.parse_lora(str(served))[0], allow_pickle=False) == (str(served), 'base_lora.safetensors')
    assert asked == ['owner/style-lora']
