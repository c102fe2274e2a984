"""Flags as SDXL users type them: A1111's and diffusers' words, and a "did you mean" for typos.

- :class:`SuggestingParser`: argparse with a suggestion for a mistyped flag, subcommand or choice
  (``--cgf`` -> ``--cfg``; ``--sampler eulr`` -> ``euler``). argparse gains a similar option only
  in Python 3.14, and not for the ``modelscope`` command's parser, so the subcommands do it here.
- :func:`sampler_name`: ``--sampler`` takes our names and A1111's (``'DPM++ 2M Karras'``, ``'Euler a'``).
- :func:`seed_value`: ``--seed -1`` is A1111's "random".
"""
from __future__ import annotations

import argparse
import difflib
import random
import re
from typing import Any, Iterable, List, NoReturn, Optional, Sequence, Tuple

from ..stages.schedulers import SCHEDULER_NAMES

RANDOM_SEED = -1


def draw_seed() -> int:
    """A random seed, drawn as the pipeline draws one when none is given."""
    return random.SystemRandom().randrange(2**32)


def seed_value(text: str) -> int:
    """--seed: an integer; -1 (A1111's word for "random") draws one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid int value: {text!r} (a seed, or -1 for a random one)') from None
    return draw_seed() if value == RANDOM_SEED else value


def sampler_name(text: str) -> str:
    """--sampler / --scheduler: our name, or A1111's in either form ('DPM++ 2M Karras', 'Euler a');
    anything else is returned as given, for argparse's choices check (and its suggestion)."""
    from .a1111 import scheduler_from_a1111

    if text in SCHEDULER_NAMES:
        return text
    lowered = text.strip().lower().replace('-', '_').replace(' ', '_')
    if lowered in SCHEDULER_NAMES:
        return lowered
    mapped = scheduler_from_a1111(text)
    return mapped if mapped in SCHEDULER_NAMES else text


def suggestion(word: str, known: Iterable[str]) -> Optional[str]:
    """The known word closest to `word`, if one is close enough to be a typo."""
    known = list(known)
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if not close and word.startswith('--'):  # a missing or extra dash: -cfg, ---cfg
        close = difflib.get_close_matches('--' + word.lstrip('-'), known, n=1, cutoff=0.6)
    return close[0] if close else None


# Python < 3.12.8 quotes the choices ('a', 'b'); later versions list them bare (a, b).
_INVALID_CHOICE = re.compile(r"invalid choice: '?(?P<word>[^']*?)'? \(choose from (?P<choices>.*)\)")


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors add "did you mean ...?" for unknown flags and choices."""

    def option_strings(self) -> List[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith('--')]

    def parse_known_args(self, args: Optional[Sequence[str]] = None,
                         namespace: Optional[argparse.Namespace] = None) -> Tuple[argparse.Namespace, List[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        unknown = [a for a in extras if a.startswith('-') and not _is_number(a)]
        if unknown and self._subparsers is None:  # a subcommand's own flags: it knows them best
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        super().error(message + self._hint(message))

    def _hint(self, message: str) -> str:
        if message.startswith('unrecognized arguments:'):
            hints = []
            for word in message.split(':', 1)[1].split():
                flag = word.split('=', 1)[0]
                near = suggestion(flag, self.option_strings()) if flag.startswith('-') else None
                if near:
                    hints.append((flag, near))
            if len(hints) == 1:
                return f'; did you mean {hints[0][1]}?'
            return '; did you mean ' + ', '.join(f'{near} for {flag}' for flag, near in hints) + '?' if hints else ''
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group('choices')) or match.group('choices').split(', ')
            near = suggestion(match.group('word'), choices)
            return f'; did you mean {near!r}?' if near else ''
        return ''


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def with_default(help_text: str, default: Any) -> str:
    """A help text that shows its default (argparse's '%(default)s' would show 'None' for derived ones)."""
    if default is None or '(default' in help_text:
        return help_text
    shown = list(default) if isinstance(default, tuple) else default
    return f'{help_text} (default: {shown})'
