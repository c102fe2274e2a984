"""Caps on the work one call may ask for, and checks of its text that come before any encoding.

Every parameter has a range (parameters.py), but a request can still ask for unbounded work: a
prompt of a million characters (its encoding cost grows with its length, and the Rust tokenizers
hold one lock), or many large images with many steps. The caps below are pipeline constructor
arguments, like ``max_images_per_call``, checked before any model work, so a request over them is
refused in well under a second on every path (Python, command line, PNG, batch, ``modelscope
server``). docs/reliability.md lists them with their defaults.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, Mapping

#: Prompt fields: each is checked on its own.
TEXT_PARAMS = ('text', 'negative_prompt', 'prompt_2', 'negative_prompt_2')
DEFAULT_MAX_PROMPT_CHARS = 10_000
DEFAULT_MAX_PROMPT_TOKENS = 1_024
#: images x height x width x steps: 8 images of 1024 x 1024 with 512 steps, or one of 4096 x 4096 with 256.
DEFAULT_MAX_PIXEL_STEPS = 4 * 1024 ** 3
#: Pipeline constructor arguments that set the caps.
LIMIT_ARGS = ('max_prompt_chars', 'max_prompt_tokens', 'max_pixel_steps_per_call')
#: prompt_weighting: deepest nesting of ( ) and [ ], and the largest weight allowed.
MAX_WEIGHT_NESTING = 50
MAX_PROMPT_WEIGHT = 10.0

@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """The caps of one pipeline (see the module docstring)."""
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_pixel_steps_per_call: int = DEFAULT_MAX_PIXEL_STEPS

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> 'RequestLimits':
        """The caps given among a pipeline's keyword arguments (the others are ignored here)."""
        values = {}
        for name in LIMIT_ARGS:
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
                values[name] = value
        return cls(**values)


def check_prompt_lengths(raw: Mapping[str, Any], limits: RequestLimits) -> None:
    """Character caps, before anything reads the prompts (validate checks their types)."""
    for name in TEXT_PARAMS:
        value = raw.get(name)
        if isinstance(value, str) and len(value) > limits.max_prompt_chars:
            raise ValueError(f'{name} has {len(value)} characters, more than max_prompt_chars '
                             f'({limits.max_prompt_chars}) of this pipeline; shorten it, or build the pipeline '
                             'with a higher max_prompt_chars')


def check_prompt_weights(name: str, text: str) -> None:
    """prompt_weighting: brackets nested at most MAX_WEIGHT_NESTING deep and every weight finite and
    within +-MAX_PROMPT_WEIGHT, so extreme weights are refused before any model work (they end as NaN)."""
    from ..stages.prompts import _ATTENTION_RE, parse_weighted

    depth = deepest = 0
    for m in _ATTENTION_RE.finditer(text):
        tok = m.group(0)
        if tok in ('(', '['):
            depth += 1
            deepest = max(deepest, depth)
        elif (tok in (')', ']') or m.group(1) is not None) and depth:
            depth -= 1
        if deepest > MAX_WEIGHT_NESTING:
            raise ValueError(f'{name}: brackets nest more than {MAX_WEIGHT_NESTING} deep; prompt_weighting '
                             f'allows at most {MAX_WEIGHT_NESTING}')
    for fragment, weight in parse_weighted(text):
        if not math.isfinite(weight) or abs(weight) > MAX_PROMPT_WEIGHT:
            raise ValueError(f'{name}: the weight of {fragment[:40]!r} is {weight:g}; prompt_weighting allows '
                             f'weights from -{MAX_PROMPT_WEIGHT:g} to {MAX_PROMPT_WEIGHT:g}')


def _texts(request: Any) -> Dict[str, str]:
    values = {'text': request.prompt, 'negative_prompt': request.negative_prompt,
              'prompt_2': request.prompt_2, 'negative_prompt_2': request.negative_prompt_2}
    return {k: v for k, v in values.items() if v}


def check_request(request: Any, limits: RequestLimits, tokenizers: Iterable[Any]) -> None:
    """Caps that need the validated request: prompt weights, prompt tokens and the call's work.
    Counting tokens is linear in the (already capped) characters; nothing is encoded."""
    from ..stages.prompts import _ENCODE_LOCK  # the tokenizers are shared and not thread-safe

    texts = _texts(request)
    if request.prompt_weighting:
        for name, text in texts.items():
            check_prompt_weights(name, text)
    for tokenizer in tokenizers:
        if tokenizer is None:
            continue
        for name, text in texts.items():
            with _ENCODE_LOCK:
                count = len(tokenizer(text).input_ids)
            if count > limits.max_prompt_tokens:
                raise ValueError(f'{name} has {count} tokens, more than max_prompt_tokens '
                                 f'({limits.max_prompt_tokens}) of this pipeline; shorten it, or build the '
                                 'pipeline with a higher max_prompt_tokens')
    work = request.num_images_per_prompt * request.height * request.width * request.num_inference_steps
    if work > limits.max_pixel_steps_per_call:
        raise ValueError(
            f'num_images_per_prompt x height x width x num_inference_steps = {request.num_images_per_prompt} x '
            f'{request.height} x {request.width} x {request.num_inference_steps} = {work} pixel-steps, more than '
            f'max_pixel_steps_per_call ({limits.max_pixel_steps_per_call}) of this pipeline; ask for fewer '
            'images, steps or pixels, or build the pipeline with a higher max_pixel_steps_per_call')


def without_batch_size(input: Any, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """ModelScope's ``batch_size`` call argument: a list of inputs is run one input at a time (each
    image equals the same input run alone), so batch_size only groups the list; a single input has
    nothing to batch, and anything but an integer >= 1 is refused."""
    kwargs = dict(kwargs)
    if 'batch_size' not in kwargs:
        return kwargs
    size = kwargs.pop('batch_size')
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f'batch_size must be an integer >= 1, got {size!r}')
    if not isinstance(input, list):
        raise ValueError('batch_size applies to a list of inputs; this call has a single input. Use '
                         'num_images_per_prompt for several images of one prompt')
    return kwargs
