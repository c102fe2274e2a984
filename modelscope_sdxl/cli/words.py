"""Messages in the command line's words: the core speaks Python (``pipeline(..., refiner=...)``,
``refiner_mode='none'``); a command-line user gets the flags (``--refiner``, ``--refiner-mode none``)."""
from __future__ import annotations

import re

from ..parameters import PARAMS_BY_NAME

# Pipeline arguments that are flags of the model group (cli/sources.py) or of --lora.
_MODEL_FLAGS = {'refiner': '--refiner', 'refiner_revision': '--refiner-revision', 'revision': '--revision',
                'device': '--device', 'lora': '--lora'}
_PIPELINE_ARG = re.compile(r'pipeline\(\.\.\., (\w+)=\.\.\.\)')
# name=value, but not a URL's query (?revision=v1&...).
_ASSIGNMENT = re.compile(r"(?<![?&\w])(\w+)=(?:'([^']*)'|([-+\w.]+))")


def flag_of(name: str) -> str:
    """The flag of a parameter or model argument: num_inference_steps -> --num-inference-steps."""
    return _MODEL_FLAGS.get(name, '--' + name.replace('_', '-'))


def in_cli_words(message: str) -> str:
    """`message` with ``pipeline(..., x=...)`` and ``name=value`` of known names written as flags."""
    message = _PIPELINE_ARG.sub(lambda m: flag_of(m.group(1)) if m.group(1) in _MODEL_FLAGS else m.group(0), message)

    def flag(m: 're.Match[str]') -> str:
        name = m.group(1)
        if name not in PARAMS_BY_NAME and name not in _MODEL_FLAGS:
            return m.group(0)
        value = m.group(2) if m.group(2) is not None else m.group(3)
        return f'{flag_of(name)} {value}'

    return _ASSIGNMENT.sub(flag, message)
