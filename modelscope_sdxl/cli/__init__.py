"""``modelscope-sdxl``: the command line and the files it reads and writes.

    modelscope-sdxl generate "a dog" --seed 1 --out dog.png          # generate.py
    modelscope-sdxl batch prompts.jsonl --out images/                # batch.py
    modelscope-sdxl schema                                           # JSON Schema of every parameter
    modelscope-sdxl webui                                            # a web page (webui.py, webui_app.py)

The same commands run as ``modelscope sdxl ...`` (``plugin.py``) and as ``python -m modelscope_sdxl ...``.

Subcommands come from :data:`SUBCOMMANDS`: each is a :class:`Subcommand` whose ``add_parser(subparsers)``
adds its parser and whose ``run(args)`` returns the exit code. The parser is built for every
invocation (``--help`` included), so ``add_parser`` must not import anything heavy; ``run`` does.
Errors end as one line on stderr, prefixed with the program's name, and an exit code
(:func:`errors.exit_code`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from .batch import add_batch_parser, batch_command
from .errors import exit_code, one_line
from .flags import SuggestingParser
from .generate import add_generate_parser, generate_command
from .quiet import verbose
from .webui import add_webui_parser, webui_command
from .words import in_cli_words

PROG = 'modelscope-sdxl'
DESCRIPTION = ('SDXL base + refiner on ModelScope: images from a prompt, written as PNG files that carry '
               'their parameters.')


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: ``add_parser(subparsers)`` adds and returns its parser; ``run(args)`` -> exit code."""
    add_parser: Callable[[Any], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


def add_schema_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser('schema', help='print the JSON Schema of every generation parameter',
                                   description='Print the JSON Schema of every generation parameter.')
    parser.add_argument('--markdown', action='store_true', help='print docs/parameters.md instead')
    return parser


def schema_command(args: argparse.Namespace) -> int:
    import json

    from ..inputs.schema import json_schema, parameters_markdown

    print_to_pipe(parameters_markdown() if args.markdown else json.dumps(json_schema(), indent=2))
    return 0


def print_to_pipe(text: str) -> None:
    """Print `text`; a reader that stops early (``schema | head``) ends the command quietly, as
    ``cat`` does, instead of with a BrokenPipeError."""
    import os

    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the broken pipe then: point it at
        # /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


#: Every subcommand, in the order ``--help`` lists them.
SUBCOMMANDS: List[Subcommand] = [
    Subcommand(add_generate_parser, generate_command),
    Subcommand(add_schema_parser, schema_command),
    Subcommand(add_batch_parser, batch_command),
    Subcommand(add_webui_parser, webui_command),
]


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add every subcommand of :data:`SUBCOMMANDS` to `parser` (this CLI's, or ``modelscope sdxl``'s)."""
    sub = parser.add_subparsers(dest='sdxl_command', metavar='COMMAND', required=True,
                                parser_class=SuggestingParser)
    for command in SUBCOMMANDS:
        command.add_parser(sub).set_defaults(_sdxl_run=command.run)
    parser.set_defaults(_sdxl_prog=parser.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(prog=PROG, description=DESCRIPTION)
    add_subcommands(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run parsed arguments; errors become one line on stderr and an exit code, never a traceback
    (unless --verbose)."""
    prog = getattr(args, '_sdxl_prog', PROG)
    try:
        return args._sdxl_run(args)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error ends as one line and an exit code
        if verbose(args):
            import traceback

            traceback.print_exc()
        print(f'{prog}: error: {in_cli_words(one_line(exc))}', file=sys.stderr)
        return exit_code(exc)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run(args)
