"""SDXL-shaped base and refiner folders with random weights, built offline.

Real SDXL weights cannot be fetched everywhere this package is tested, so the
tests, the README's first command and the benchmarks run on folders built here.
They use exactly the diffusers classes and the hub layout of the real repos
(configuration.json, model_index.json, one sub-folder per component,
``.safetensors`` weights, CLIP tokenizers from vocab.json + merges.txt), so they
load through the same code path as real SDXL. Random weights draw noise.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, Optional, Tuple

from ..names import MODEL_TYPE, PIPELINE_TYPE, TASK

# Words that become single tokens in the generated tokenizer, so prompts made of
# them tokenize like they would with CLIP's real vocabulary.
PROMPT_WORDS = (
    'a an the of on in at with and or to by from under over near top bottom left right center middle '
    'small large big tiny huge one two three red green blue yellow orange purple pink white black gray '
    'brown cyan magenta circle square triangle star ring line dot stripe background foreground shape '
    'dog cat bird horse fish tree house car boat flower sun moon sky sea mountain river city forest '
    'photo painting drawing picture portrait landscape detailed sharp blurry bright dark light colorful '
    'cute old young happy beautiful high quality best worst ugly low resolution lowres bad art style '
    'astronaut riding sitting standing running flying walking field grass snow rain night day morning '
    'is are very cinematic lighting studio render digital oil watercolor sketch'
).split()

# Sizes of the tiny models. The VAE has SDXL's four blocks (scale factor 8) and
# the UNets keep SDXL's text-time conditioning: base 6 time ids, refiner 5.
TINY_TEXT_ENCODER: Dict[str, Any] = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
    max_position_embeddings=77, hidden_act='gelu', projection_dim=32,
)
TINY_UNET_COMMON: Dict[str, Any] = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[32, 64], down_block_types=['DownBlock2D', 'CrossAttnDownBlock2D'],
    up_block_types=['CrossAttnUpBlock2D', 'UpBlock2D'], attention_head_dim=[2, 4],
    transformer_layers_per_block=[1, 2], use_linear_projection=True,
    addition_embed_type='text_time', addition_time_embed_dim=8, norm_num_groups=8,
)
TINY_VAE: Dict[str, Any] = dict(
    block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4,
    latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=64,
    scaling_factor=0.13025, force_upcast=True,
)
# SDXL's own scheduler config (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_SCHEDULER: Dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000,
    prediction_type='epsilon', steps_offset=1, timestep_spacing='leading', interpolation_type='linear',
    use_karras_sigmas=False, sample_max_value=1.0, clip_sample=False, set_alpha_to_one=False,
    skip_prk_steps=True,
)


def pair_configs(text_encoder: Dict[str, Any], text_encoder_2: Dict[str, Any], vae: Dict[str, Any],
                 unet: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Component configs of an SDXL pair, in the layout of sdxl-full-size-configs.json.

    The UNets' input widths follow from the text encoders', as in SDXL: the base reads both
    encoders' hidden states and 6 time ids, the refiner text_encoder_2's alone and 5 time ids.
    """
    pooled = text_encoder_2['projection_dim']
    time_dim = unet['addition_time_embed_dim']
    return {
        'text_encoder': dict(text_encoder),
        'text_encoder_2': dict(text_encoder_2),
        'vae': dict(vae),
        'unet_base': dict(unet, cross_attention_dim=text_encoder['hidden_size'] + text_encoder_2['hidden_size'],
                          projection_class_embeddings_input_dim=6 * time_dim + pooled),
        'unet_refiner': dict(unet, cross_attention_dim=text_encoder_2['hidden_size'],
                             projection_class_embeddings_input_dim=5 * time_dim + pooled),
    }


def tiny_configs() -> Dict[str, Dict[str, Any]]:
    """Component configs of the tiny pair."""
    return pair_configs(TINY_TEXT_ENCODER, TINY_TEXT_ENCODER, TINY_VAE, TINY_UNET_COMMON)


def _bpe_vocab_and_merges(words: Iterable[str]) -> Tuple[Dict[str, int], list]:
    """A CLIP-style byte-level BPE vocabulary in which every word in `words` is one token.

    Plain BPE training on the word list (every word counted once): repeatedly merge
    the most frequent adjacent pair, ties broken alphabetically, until each word is
    one symbol. Deterministic, so the same words always give the same token ids.
    """
    from collections import Counter

    from tokenizers import pre_tokenizers

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    words = sorted(set(words))
    symbols = [list(w[:-1]) + [w[-1] + '</w>'] for w in words]
    merges = []
    while True:
        counts: Counter = Counter()
        for seq in symbols:
            counts.update(zip(seq, seq[1:]))
        if not counts:
            break
        left, right = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(f'{left} {right}')
        for i, seq in enumerate(symbols):
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == left and seq[j + 1] == right:
                    out.append(left + right)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            symbols[i] = out

    # CLIP's order: the 256 byte symbols, the same with '</w>', merge results, specials.
    base = sorted(byte_alphabet)
    tokens = base + [b + '</w>' for b in base] + [m.replace(' ', '') for m in merges]
    vocab: Dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    vocab['<|startoftext|>'] = len(vocab)
    vocab['<|endoftext|>'] = len(vocab)
    return vocab, merges


def _save_tokenizer(folder: str, vocab: Dict[str, int], merges: list, pad_token: str) -> None:
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    tokenizer = CLIPTokenizer.from_pretrained(folder, pad_token=pad_token, model_max_length=77)
    tokenizer.save_pretrained(folder)


def _write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2)
        f.write('\n')


def base_configuration(refiner_id: Optional[str], refiner_revision: Optional[str]) -> Dict[str, Any]:
    """The configuration.json a base repo carries to be served by this package."""
    model: Dict[str, Any] = {'type': MODEL_TYPE}
    if refiner_id is not None:
        model['refiner'] = {'model_id': refiner_id, 'revision': refiner_revision}
    return {'framework': 'pytorch', 'task': TASK, 'model': model, 'pipeline': {'type': PIPELINE_TYPE}}


def clip_tokenizers(folder: str, words: Iterable[str] = PROMPT_WORDS) -> Tuple[Dict[str, int], Any, Any]:
    """Write SDXL's two CLIP tokenizers for `words` to `folder`/tokenizer and `folder`/tokenizer_2.

    Both share one vocabulary; like the real repos, `tokenizer` pads with
    <|endoftext|> and `tokenizer_2` with "!". Returns (vocab, tokenizer, tokenizer_2).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab_and_merges(words)
    _save_tokenizer(os.path.join(folder, 'tokenizer'), vocab, merges, '<|endoftext|>')
    _save_tokenizer(os.path.join(folder, 'tokenizer_2'), vocab, merges, '!')
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, 'tokenizer'))
    tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(folder, 'tokenizer_2'))
    return vocab, tokenizer, tokenizer_2


def text_encoder_config(config: Dict[str, Any], vocab: Dict[str, int]) -> Any:
    """A CLIPTextConfig from one of the component configs, with the vocabulary's special token ids."""
    from transformers import CLIPTextConfig

    cfg = {k: v for k, v in config.items() if not k.endswith('_token_id')}
    cfg.setdefault('vocab_size', len(vocab))
    return CLIPTextConfig(**cfg, bos_token_id=vocab['<|startoftext|>'], eos_token_id=vocab['<|endoftext|>'],
                          pad_token_id=1)


def save_sdxl_pair(root: str, *, text_encoder: Any, text_encoder_2: Any, tokenizer: Any, tokenizer_2: Any,
                   vae: Any, unet: Any, refiner_unet: Any, tokenizer_dir: str,
                   refiner_ref: str = '../refiner', refiner_revision: Optional[str] = None) -> Tuple[str, str]:
    """Write networks as `root`/base and `root`/refiner in the hub layout; return their paths.

    The refiner shares `text_encoder_2`, `tokenizer_2` and `vae` with the base,
    as the real repos do. `tokenizer_dir` is the folder `clip_tokenizers` wrote,
    whose vocab.json and merges.txt are shipped next to each saved tokenizer.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base_dir, refiner_dir = os.path.join(root, 'base'), os.path.join(root, 'refiner')
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    base = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False)
    base.save_pretrained(base_dir, safe_serialization=True)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None,
        tokenizer_2=tokenizer_2, unet=refiner_unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False)
    refiner.save_pretrained(refiner_dir, safe_serialization=True)
    # save_pretrained writes the tokenizer from memory; ship the plain BPE files too,
    # as the real hub repos do.
    for folder, name in ((base_dir, 'tokenizer'), (base_dir, 'tokenizer_2'), (refiner_dir, 'tokenizer_2')):
        for fname in ('vocab.json', 'merges.txt'):
            src = os.path.join(tokenizer_dir, name, fname)
            with open(src, 'rb') as s, open(os.path.join(folder, name, fname), 'wb') as d:
                d.write(s.read())

    _write_json(os.path.join(base_dir, 'configuration.json'),
                base_configuration(refiner_ref, refiner_revision))
    _write_json(os.path.join(refiner_dir, 'configuration.json'),
                {'framework': 'pytorch', 'task': 'image-to-image'})
    return base_dir, refiner_dir


def build_sdxl_pair(root: str,
                    configs: Optional[Dict[str, Dict[str, Any]]] = None,
                    seed: int = 0,
                    refiner_ref: str = '../refiner',
                    refiner_revision: Optional[str] = None,
                    words: Iterable[str] = PROMPT_WORDS) -> Tuple[str, str]:
    """Write `root`/base and `root`/refiner in the hub layout; return their paths.

    `configs` defaults to the tiny sizes; pass the full-size configs to build a
    full-size random-weight SDXL. `refiner_ref` is what the base's
    configuration.json names as its refiner (a path relative to the base folder,
    an absolute path, or a hub id).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    configs = configs or tiny_configs()
    tokenizer_dir = os.path.join(root, '.tokenizers')
    vocab, tokenizer, tokenizer_2 = clip_tokenizers(tokenizer_dir, words)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_encoder_config(configs['text_encoder'], vocab)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_encoder_config(configs['text_encoder_2'], vocab)).eval()
    vae = AutoencoderKL(**configs['vae']).eval()
    unet = UNet2DConditionModel(**configs['unet_base']).eval()
    refiner_unet = UNet2DConditionModel(**configs['unet_refiner']).eval()
    return save_sdxl_pair(
        root, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, vae=vae, unet=unet, refiner_unet=refiner_unet, tokenizer_dir=tokenizer_dir,
        refiner_ref=refiner_ref, refiner_revision=refiner_revision)


def build_tiny_sdxl(root: str, seed: int = 0) -> Tuple[str, str]:
    """Build (or reuse) the tiny random-weight base and refiner under `root`."""
    base_dir, refiner_dir = os.path.join(root, 'base'), os.path.join(root, 'refiner')
    marker = os.path.join(root, f'.complete-{seed}')
    if not os.path.exists(marker):
        build_sdxl_pair(root, seed=seed)
        open(marker, 'w').close()
    return base_dir, refiner_dir
