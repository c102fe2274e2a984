"""Text that is not valid Unicode, refused by name before a tokenizer or a JSON writer meets it.

A lone surrogate (``"\\ud800"`` in JSON, or a command-line argument whose bytes are not UTF-8, which
Python decodes to surrogates) cannot be encoded as UTF-8: tokenizers fail on it with an error that
names no parameter, and a manifest cannot record it. No imports, so every layer may use it.
"""
from __future__ import annotations

import re
from typing import Optional

_SURROGATE = re.compile('[\ud800-\udfff]')


def lone_surrogate(text: str) -> Optional[int]:
    """Index of the first lone surrogate (not valid Unicode: it cannot be encoded as UTF-8), or None."""
    match = _SURROGATE.search(text)
    return None if match is None else match.start()


def check_text(name: str, text: str) -> None:
    """Refuse text that is not valid Unicode, naming the parameter (a tokenizer would fail deep inside)."""
    index = lone_surrogate(text)
    if index is not None:
        raise ValueError(f'{name} holds a lone surrogate ({ascii(text[index])} at character {index}), which is '
                         'not valid Unicode; on the command line this comes from an argument that is not UTF-8')
