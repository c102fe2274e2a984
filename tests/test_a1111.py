"""AUTOMATIC1111's ``parameters`` text: our PNGs written in its words (read back by sd-parsers, an
independent reader), its files read as its own parser reads them, and Clip skip in both countings."""
import numpy as np
import pytest
import torch

from modelscope_sdxl.cli.a1111 import (a1111_text, clip_skip_from_a1111, clip_skip_to_a1111, parse_a1111_text,
                                       scheduler_from_a1111)
from modelscope_sdxl.cli.png import save_png
from modelscope_sdxl.stages.schedulers import SCHEDULER_NAMES

PARAMS = {'text': 'a castle, (red:1.2) roof', 'negative_prompt': 'blurry, ugly', 'num_inference_steps': 30,
          'guidance_scale': 5.5, 'seed': 123, 'height': 64, 'width': 80, 'scheduler': 'dpmpp_2m_karras',
          'refiner_mode': 'ensemble', 'high_noise_frac': 0.8}


def test_samplers_are_written_in_a1111_words_with_the_schedule_type():
    settings = a1111_text(PARAMS).splitlines()[-1]
    assert 'Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 123, Size: 80x64' in settings
    assert 'Sampler: Euler a,' in a1111_text({**PARAMS, 'scheduler': 'euler_ancestral'})
    assert 'Schedule type' not in a1111_text({**PARAMS, 'scheduler': 'euler_ancestral'})


@pytest.mark.parametrize('scheduler', SCHEDULER_NAMES)
def test_every_sampler_reads_back_from_its_a1111_words(scheduler):
    back = parse_a1111_text(a1111_text({**PARAMS, 'scheduler': scheduler}))
    assert back.get('scheduler', 'euler') == scheduler


@pytest.mark.parametrize('sampler,schedule,ours', [
    ('DPM++ 2M Karras', None, 'dpmpp_2m_karras'),            # A1111 before 1.9
    ('DPM++ 2M', 'Karras', 'dpmpp_2m_karras'),               # A1111 1.9+
    ('DPM++ 2M', 'Automatic', 'dpmpp_2m_karras'),            # A1111's default schedule for DPM++ 2M
    ('DPM++ 2M', None, 'dpmpp_2m'),
    ('DPM++ 2M SDE Karras', None, 'dpmpp_2m_sde_karras'),
    ('DPM++ 2M SDE', 'Karras', 'dpmpp_2m_sde_karras'),
    ('Euler a', 'Automatic', 'euler_ancestral'),
    ('UniPC', None, 'unipc'),
])
def test_both_a1111_sampler_forms_are_read(sampler, schedule, ours):
    assert scheduler_from_a1111(sampler, schedule) == ours
    text = f'a dog\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 5, Size: 1024x768'
    if schedule:
        text += f', Schedule type: {schedule}'
    assert parse_a1111_text(text)['scheduler'] == ours


@pytest.mark.parametrize('sampler,schedule', [('Euler', 'Karras'), ('DPM++ 2M SDE', 'Automatic'),
                                              ('DPM++ SDE', 'Karras'), ('LMS', None)])
def test_a_sampler_without_an_equivalent_is_kept_in_words_not_dropped(sampler, schedule):
    text = f'a dog\nSteps: 20, Sampler: {sampler}, CFG scale: 7, Seed: 5'
    if schedule:
        text += f', Schedule type: {schedule}'
    scheduler = parse_a1111_text(text)['scheduler']
    assert scheduler not in SCHEDULER_NAMES and scheduler.startswith(sampler)


def test_a_colon_in_the_prompt_is_prompt_text_as_a1111_reads_it():
    assert parse_a1111_text('portrait: a man, blue eyes') == {'text': 'portrait: a man, blue eyes'}
    assert parse_a1111_text('a dog\nNegative prompt: ugly, style: bad') == {
        'text': 'a dog', 'negative_prompt': 'ugly, style: bad'}
    back = parse_a1111_text('portrait: a man\nNegative prompt: style: bad\nSteps: 4, CFG scale: 6, Seed: 9')
    assert back == {'text': 'portrait: a man', 'negative_prompt': 'style: bad', 'num_inference_steps': 4,
                    'guidance_scale': 6, 'seed': 9}


def test_values_with_commas_are_quoted_and_read_back():
    text = a1111_text({**PARAMS, 'model': '/models/sdxl, v2'})
    assert 'Model: "/models/sdxl, v2"' in text
    assert parse_a1111_text(text)['model'] == '/models/sdxl, v2'


@pytest.mark.parametrize('a1111,diffusers', [(1, None), (2, None), (3, 1), (4, 2)])
def test_clip_skip_is_translated_between_the_two_countings(a1111, diffusers):
    assert clip_skip_from_a1111(a1111) == diffusers
    back = parse_a1111_text(f'a dog\nSteps: 20, CFG scale: 7, Seed: 5, Clip skip: {a1111}')
    assert back.get('clip_skip') == diffusers
    if diffusers is not None:
        assert clip_skip_to_a1111(diffusers) == a1111
        assert f'Clip skip: {a1111}' in a1111_text({**PARAMS, 'clip_skip': diffusers})


def test_diffusers_sdxl_clip_skip_1_is_the_layer_a1111_calls_clip_skip_3(sdxl_pipe):
    """A1111's 'Clip skip: N' conditions on hidden_states[-N] (sd_hijack_clip for SDXL); the mapping
    holds only if diffusers' SDXL clip_skip=1 takes hidden_states[-3] and its default [-2]."""
    base = sdxl_pipe.model.components.base
    tokens = base.tokenizer('a dog', padding='max_length', max_length=base.tokenizer.model_max_length,
                            truncation=True, return_tensors='pt').input_ids
    with torch.no_grad():
        hidden = base.text_encoder(tokens, output_hidden_states=True).hidden_states
        for a1111 in (2, 3):
            embeds = base.encode_prompt('a dog', device='cpu', num_images_per_prompt=1,
                                        do_classifier_free_guidance=False,
                                        clip_skip=clip_skip_from_a1111(a1111))[0]
            width = hidden[-a1111].shape[-1]
            assert torch.equal(embeds[..., :width], hidden[-a1111])


def test_sd_parsers_reads_our_pngs(tmp_path):
    from sd_parsers import ParserManager

    path = tmp_path / 'ours.png'
    save_png(str(path), np.zeros((64, 80, 3), np.uint8), PARAMS, {'model': 'owner/sdxl'})
    info = ParserManager().parse(str(path))
    assert info.generator.name == 'AUTOMATIC1111'
    assert info.full_prompt == PARAMS['text'] and info.full_negative_prompt == PARAMS['negative_prompt']
    (sampler,) = info.samplers
    assert sampler.name == 'DPM++ 2M' and sampler.parameters['scheduler'] == 'Karras'
    assert sampler.parameters['seed'] == '123' and sampler.parameters['steps'] == '30'
    assert float(sampler.parameters['cfg_scale']) == 5.5
    assert sampler.model.name == 'owner/sdxl'
