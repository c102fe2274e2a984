"""Long prompts are encoded whole, weighting is opt-in, and callbacks report and cancel."""
import numpy as np
import pytest
import torch

from modelscope_sdxl.generation import GenerationCancelled
from modelscope_sdxl.parameters import validate
from modelscope_sdxl.stages.prompts import encode, parse_weighted

LONG = ('a red circle on a blue background, ' * 12).strip(', ')  # about 100 tokens


def image(pipe, **params):
    return pipe({'seed': 9, 'num_inference_steps': 6, **params})['output_imgs'][0].astype(int)


def embeds(pipe, stage='base', **params):
    """What each stage's UNet receives for these parameters."""
    request = validate({'seed': 1, 'num_inference_steps': 6, **params}, pipe.limits)
    stage_pipe = getattr(pipe.model.components, stage)
    return encode(stage_pipe, request, pipe.model.components.device, guidance=True)


@pytest.mark.parametrize('stage', ['base', 'refiner'])
def test_long_prompt_is_not_cut_every_word_counts(sdxl_pipe, stage):
    tokenizer = sdxl_pipe.model.components.base.tokenizer
    assert len(tokenizer(LONG).input_ids) > 77
    a = embeds(sdxl_pipe, stage, text=LONG + ', a green square')
    b = embeds(sdxl_pipe, stage, text=LONG + ', a yellow star')
    assert a['prompt_embeds'].shape[1] == 154  # two 77-token chunks
    assert a['negative_prompt_embeds'].shape == a['prompt_embeds'].shape
    assert torch.equal(a['prompt_embeds'][:, :77], b['prompt_embeds'][:, :77])
    assert not torch.allclose(a['prompt_embeds'][:, 77:], b['prompt_embeds'][:, 77:]), \
        'words after token 77 must reach the UNet'
    assert image(sdxl_pipe, text=LONG).shape == (64, 64, 3)


def test_long_negative_prompt_is_padded_to_the_prompt(sdxl_pipe):
    e = embeds(sdxl_pipe, text='a dog', negative_prompt=LONG)
    assert e['prompt_embeds'].shape == e['negative_prompt_embeds'].shape == (1, 154, 64)
    assert image(sdxl_pipe, text=LONG, negative_prompt=LONG + ' ' + LONG).shape == (64, 64, 3)


def test_short_prompts_keep_the_diffusers_encoding(sdxl_pipe):
    base = sdxl_pipe.model.components.base
    ours = embeds(sdxl_pipe, text='a red circle', negative_prompt='blurry')
    reference = base.encode_prompt('a red circle', negative_prompt='blurry', device=base.device)
    for name, ref in zip(['prompt_embeds', 'negative_prompt_embeds', 'pooled_prompt_embeds',
                          'negative_pooled_prompt_embeds'], reference):
        assert torch.equal(ours[name], ref)


def test_weighting_is_opt_in_and_neutral_without_weights(sdxl_pipe):
    text = 'a red circle on a blue background'
    plain = embeds(sdxl_pipe, text=text)['prompt_embeds']
    neutral = embeds(sdxl_pipe, text=text, prompt_weighting=True)['prompt_embeds']
    weighted = embeds(sdxl_pipe, text='a (red:1.5) circle on a blue background', prompt_weighting=True)
    literal = embeds(sdxl_pipe, text='a (red:1.5) circle on a blue background')['prompt_embeds']
    assert torch.allclose(neutral, plain, atol=1e-5)
    assert not torch.allclose(weighted['prompt_embeds'], plain, atol=1e-3)
    assert not torch.allclose(literal, plain, atol=1e-3), 'without weighting the brackets are plain text'
    assert np.abs(image(sdxl_pipe, text=text, prompt_weighting=True) - image(sdxl_pipe, text=text)).max() <= 2
    assert image(sdxl_pipe, text='(red:1.4) circle', prompt_weighting=True, num_images_per_prompt=2,
                 refiner_mode='sdedit').shape == (64, 64, 3)


@pytest.mark.parametrize('text,expected', [
    ('a (red:1.3) circle', [('a', 1.0), ('red', 1.3), ('circle', 1.0)]),
    ('a ((dog))', [('a', 1.0), ('dog', 1.21)]),
    ('[blurry] photo', [('blurry', 0.909091), ('photo', 1.0)]),
    ('a \\(literal\\) (open', [('a (literal)', 1.0), ('open', 1.1)]),
    ('(a [b]:1.5)', [('a', 1.5), ('b', 1.363636)]),
])
def test_attention_syntax(text, expected):
    assert parse_weighted(text) == expected


@pytest.mark.parametrize('stage', ['base', 'refiner'])
@pytest.mark.parametrize('clip_skip', [1, 2])
def test_clip_skip_with_weighting_equals_diffusers_for_a_short_prompt(sdxl_pipe, stage, clip_skip):
    """Weighting without weights goes through compel; with clip_skip it must still give what diffusers'
    encode_prompt gives (an earlier layer for the prompt, the penultimate one for the negative)."""
    pipe = getattr(sdxl_pipe.model.components, stage)
    ours = embeds(sdxl_pipe, stage, text='a red circle', negative_prompt='blurry', prompt_weighting=True,
                  clip_skip=clip_skip)
    reference = pipe.encode_prompt('a red circle', negative_prompt='blurry', device=pipe.device,
                                   clip_skip=clip_skip)
    for name, ref in zip(['prompt_embeds', 'negative_prompt_embeds', 'pooled_prompt_embeds',
                          'negative_pooled_prompt_embeds'], reference):
        assert torch.allclose(ours[name], ref, atol=1e-5), name
    assert not torch.allclose(ours['prompt_embeds'], embeds(sdxl_pipe, stage, text='a red circle',
                                                            prompt_weighting=True)['prompt_embeds'], atol=1e-3)


def test_clip_skip_with_a_long_prompt_reads_the_same_layer_as_diffusers(sdxl_pipe):
    """The start of a long prompt is what diffusers encodes of it (diffusers cuts the rest; compel ends
    its first chunk at a word boundary, a few tokens before the 77th, so only the first 64 are compared)."""
    base = sdxl_pipe.model.components.base
    ours = embeds(sdxl_pipe, text=LONG, negative_prompt='blurry', clip_skip=1)
    cut = base.encode_prompt(LONG, negative_prompt='blurry', device=base.device, clip_skip=1)
    assert ours['prompt_embeds'].shape[1] == 154
    assert torch.allclose(ours['prompt_embeds'][:, :64], cut[0][:, :64], atol=1e-5)
    without = embeds(sdxl_pipe, text=LONG, negative_prompt='blurry')['prompt_embeds']
    assert not torch.allclose(ours['prompt_embeds'][:, 77:], without[:, 77:], atol=1e-3), \
        'clip_skip must reach every chunk'
    assert image(sdxl_pipe, text=LONG, clip_skip=1).shape == (64, 64, 3)


def test_clip_skip_with_a_weighted_prompt(sdxl_pipe):
    weighted = embeds(sdxl_pipe, text='a (red:1.5) circle', prompt_weighting=True, clip_skip=1)['prompt_embeds']
    neutral = embeds(sdxl_pipe, text='a red circle', prompt_weighting=True, clip_skip=1)['prompt_embeds']
    unskipped = embeds(sdxl_pipe, text='a (red:1.5) circle', prompt_weighting=True)['prompt_embeds']
    assert not torch.allclose(weighted, neutral, atol=1e-3)
    assert not torch.allclose(weighted, unskipped, atol=1e-3)
    assert image(sdxl_pipe, text='a (red:1.5) circle', prompt_weighting=True, clip_skip=2,
                 refiner_mode='sdedit').shape == (64, 64, 3)


def test_callback_reports_each_step_of_each_stage(sdxl_pipe):
    calls = []
    sdxl_pipe({'text': 'a dog', 'seed': 1, 'num_inference_steps': 10}, callback=lambda *a: calls.append(a))
    assert calls == [('base', i, 8) for i in range(1, 9)] + [('refiner', i, 2) for i in range(1, 3)]


@pytest.mark.parametrize('stop_at', [('base', 3), ('refiner', 1)])
def test_callback_cancels_cleanly_and_the_next_call_is_unaffected(sdxl_pipe, stop_at):
    before = image(sdxl_pipe, text='a dog')
    seen = []

    def cancel(stage, step, total):
        seen.append((stage, step))
        return (stage, step) != stop_at

    with pytest.raises(GenerationCancelled, match=f'{stop_at[0]} stage'):
        sdxl_pipe({'text': 'a dog', 'seed': 9, 'num_inference_steps': 6}, callback=cancel)
    assert seen[-1] == stop_at
    assert (image(sdxl_pipe, text='a dog') == before).all()
