"""Prompt embeddings for each stage: diffusers' own for ordinary prompts, compel's for long or weighted ones.

A prompt of at most 77 tokens with no weighting is encoded by diffusers'
``encode_prompt``, so images equal a plain diffusers run. A longer prompt is
encoded in 77-token chunks (as AUTOMATIC1111 and ComfyUI do) instead of being cut,
and ``prompt_weighting=True`` reads AUTOMATIC1111's ``(word:1.3)`` / ``(word)`` /
``[word]`` syntax; both use compel's embedding providers, which chunk and weight
for each of SDXL's text encoders.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..parameters import GenerationRequest

# Tokenizers (Rust, shared by all calls) raise "Already borrowed" when used from two threads at once.
_ENCODE_LOCK = threading.Lock()
_EMBED_NAMES = ('prompt_embeds', 'negative_prompt_embeds', 'pooled_prompt_embeds', 'negative_pooled_prompt_embeds')


def uses_guidance(guidance_scale: float, time_cond_proj_dim: Optional[int]) -> bool:
    # The same test diffusers' SDXL pipelines use for `do_classifier_free_guidance`.
    return guidance_scale > 1 and time_cond_proj_dim is None


_ATTENTION_RE = re.compile(r'\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:')


def parse_weighted(text: str) -> List[Tuple[str, float]]:
    """AUTOMATIC1111 attention syntax -> (fragment, weight) pairs.

    ``(a:1.3)`` weights a by 1.3, ``(a)`` by 1.1, ``[a]`` by 1/1.1; brackets nest and
    multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal; unclosed brackets close at the end.
    """
    pieces: List[List[Any]] = []
    round_open: List[int] = []
    square_open: List[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in _ATTENTION_RE.finditer(text):
        tok, number = m.group(0), m.group(1)
        if tok.startswith('\\'):
            pieces.append([tok[1:] or tok, 1.0])
        elif tok == '(':
            round_open.append(len(pieces))
        elif tok == '[':
            square_open.append(len(pieces))
        elif number is not None and round_open:
            multiply_from(round_open.pop(), float(number))
        elif tok == ')' and round_open:
            multiply_from(round_open.pop(), 1.1)
        elif tok == ']' and square_open:
            multiply_from(square_open.pop(), 1 / 1.1)
        else:
            pieces.append([tok, 1.0])
    for start in round_open:
        multiply_from(start, 1.1)
    for start in square_open:
        multiply_from(start, 1 / 1.1)

    merged: List[Tuple[str, float]] = []
    for frag, weight in pieces:
        weight = round(weight, 6)
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + frag, weight)
        else:
            merged.append((frag, weight))
    merged = [(' '.join(f.split()), w) for f, w in merged if f.strip()]
    return merged or [('', 1.0)]


def _too_long(pipe: Any, texts: List[Optional[str]]) -> bool:
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        if tokenizer is None:
            continue
        for text in texts:
            if text and len(tokenizer(text).input_ids) > tokenizer.model_max_length:
                return True
    return False


class _ClipSkipped:
    """A text encoder whose output ends `skip` layers early, so that the penultimate hidden state compel
    reads is the one diffusers' ``clip_skip`` picks (``hidden_states[-(clip_skip + 2)]``). Everything
    else (pooled output, device, dtype) is the encoder's own."""

    def __init__(self, encoder: Any, skip: int):
        self._encoder, self._skip = encoder, skip

    @classmethod
    def wrap(cls, encoder: Any, skip: Optional[int]) -> Any:
        return cls(encoder, skip) if skip else encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self._encoder(*args, **kwargs)
        if getattr(output, 'hidden_states', None) is not None:
            output.hidden_states = output.hidden_states[:len(output.hidden_states) - self._skip]
        return output


def _compel(tokenizer: Any, encoder: Any, requires_pooled: bool, device: torch.device) -> Any:
    from compel import Compel, ReturnedEmbeddingsType

    return Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=False,
                  returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                  requires_pooled=requires_pooled, device=device, dtype_for_device_getter=lambda _: encoder.dtype)


def _compel_embeds(pipe: Any, request: GenerationRequest, device: torch.device, guidance: bool
                   ) -> Dict[str, torch.Tensor]:
    """Chunked (and optionally weighted) embeddings laid out as diffusers' encode_prompt returns them,
    with ``clip_skip`` applied as diffusers applies it."""
    encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    encoders = [(t, e) for t, e in encoders if e is not None]
    prompts = [request.prompt, request.prompt_2 or request.prompt][-len(encoders):]
    negative = request.negative_prompt or ''
    negatives = [negative, request.negative_prompt_2 or negative][-len(encoders):]
    zero_negative = request.negative_prompt is None and pipe.config.force_zeros_for_empty_prompt

    def fragments(text: str) -> List[Tuple[str, float]]:
        return parse_weighted(text) if request.prompt_weighting else [(text, 1.0)]

    per_encoder = []  # [(positive, negative or None)] per encoder, then pooled of the last one
    pooled: Dict[str, torch.Tensor] = {}
    for (tokenizer, encoder), prompt, neg in zip(encoders, prompts, negatives):
        is_last = encoder is encoders[-1][1]
        # diffusers' clip_skip picks an earlier layer for the prompt only; negative prompts always come
        # from the penultimate layer (encode_prompt), so the negative's compel reads the plain encoder.
        compels = [_compel(tokenizer, _ClipSkipped.wrap(encoder, request.clip_skip), is_last, device)]
        compels.append(_compel(tokenizer, encoder, is_last, device) if request.clip_skip else compels[0])
        texts = [prompt] + ([neg] if guidance and not zero_negative else [])
        embeds = []
        for i, text in enumerate(texts):
            provider = compels[i].conditioning_provider
            frags = fragments(text)
            embeds.append(provider.get_embeddings_for_weighted_prompt_fragments(
                [[f for f, _ in frags]], [[w for _, w in frags]], device=device))
            if is_last:
                key = 'pooled_prompt_embeds' if i == 0 else 'negative_pooled_prompt_embeds'
                pooled[key] = provider.get_pooled_embeddings([' '.join(f for f, _ in frags)], device=device)
        per_encoder.append((compels, embeds))

    # Pad every tensor (positive and negative, of both encoders) with empty chunks to one length,
    # each with the empty chunk of the layer it was read from.
    length = max(e.shape[1] for _, embeds in per_encoder for e in embeds)
    padded = []
    for compels, embeds in per_encoder:
        probe = torch.zeros(1, length, embeds[0].shape[-1], dtype=embeds[0].dtype, device=embeds[0].device)
        padded.append([compel.pad_conditioning_tensors_to_same_length([e, probe])[0]
                       for compel, e in zip(compels, embeds)])
    result = {'prompt_embeds': torch.cat([p[0] for p in padded], dim=-1)}
    result['pooled_prompt_embeds'] = pooled['pooled_prompt_embeds']
    if guidance:
        if zero_negative:
            result['negative_prompt_embeds'] = torch.zeros_like(result['prompt_embeds'])
            result['negative_pooled_prompt_embeds'] = torch.zeros_like(result['pooled_prompt_embeds'])
        else:
            result['negative_prompt_embeds'] = torch.cat([p[1] for p in padded], dim=-1)
            result['negative_pooled_prompt_embeds'] = pooled['negative_pooled_prompt_embeds']
    return result


def _uses_compel(pipe: Any, request: GenerationRequest) -> bool:
    texts = [request.prompt, request.prompt_2, request.negative_prompt, request.negative_prompt_2]
    return request.prompt_weighting or _too_long(pipe, texts)


def encode(pipe: Any, request: GenerationRequest, device: torch.device, guidance: bool) -> Dict[str, torch.Tensor]:
    """Embeddings for `pipe` (base or refiner), passed to its __call__ in place of the prompt strings."""
    with _ENCODE_LOCK, torch.no_grad():
        if _uses_compel(pipe, request):
            return _compel_embeds(pipe, request, device, guidance)
        embeds = pipe.encode_prompt(
            prompt=request.prompt, prompt_2=request.prompt_2, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=guidance, negative_prompt=request.negative_prompt,
            negative_prompt_2=request.negative_prompt_2, clip_skip=request.clip_skip)
    return {k: v for k, v in zip(_EMBED_NAMES, embeds) if v is not None}


def encode_for_refiner(refiner: Any, request: GenerationRequest, device: torch.device, guidance: bool,
                       base_embeds: Dict[str, torch.Tensor], cache: Dict[Any, Any]) -> Dict[str, torch.Tensor]:
    """The refiner's embeddings, taken from the base's where they are the same tensors.

    The refiner encodes with text_encoder_2 only, which is the base's: for an ordinary
    prompt without prompt_2, its prompt embeddings are the last `width` channels of the
    base's and its pooled embeddings the base's. Its negative embeddings for "no negative
    prompt" are the encoding of "" (the refiner does not zero them), computed once per model.
    Anything else is encoded as diffusers would.
    """
    width = refiner.text_encoder_2.config.hidden_size
    if request.prompt_2 is not None or request.negative_prompt_2 is not None or _uses_compel(refiner, request):
        return encode(refiner, request, device, guidance)
    embeds = {'prompt_embeds': base_embeds['prompt_embeds'][..., -width:],
              'pooled_prompt_embeds': base_embeds['pooled_prompt_embeds']}
    if not guidance:
        return embeds
    if request.negative_prompt is not None:
        embeds['negative_prompt_embeds'] = base_embeds['negative_prompt_embeds'][..., -width:]
        embeds['negative_pooled_prompt_embeds'] = base_embeds['negative_pooled_prompt_embeds']
        return embeds
    if refiner.config.force_zeros_for_empty_prompt:
        embeds['negative_prompt_embeds'] = torch.zeros_like(embeds['prompt_embeds'])
        embeds['negative_pooled_prompt_embeds'] = torch.zeros_like(embeds['pooled_prompt_embeds'])
        return embeds
    # diffusers encodes negative prompts from the penultimate layer whatever clip_skip is.
    key = ('empty negative', str(device), refiner.text_encoder_2.dtype)
    if key not in cache:
        with _ENCODE_LOCK, torch.no_grad():
            empty = refiner.encode_prompt(prompt='', device=device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        cache[key] = (empty[0], empty[2])
    embeds['negative_prompt_embeds'], embeds['negative_pooled_prompt_embeds'] = cache[key]
    return embeds
