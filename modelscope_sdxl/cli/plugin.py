"""The ``modelscope`` command's plugin: ``modelscope sdxl ...``, and this package's model and
pipeline known to ``modelscope server``.

The ``modelscope`` command (from modelscope-hub) loads every entry point of the group
``modelscope_hub.cli_plugins`` when it starts, whatever the subcommand, and calls the loaded
class's static ``register(subparsers)``; the chosen command's class is then built with the parsed
arguments and its ``execute()`` runs. setup.py names :class:`SDXLCommand` there.

Loading this module imports ``modelscope_sdxl``, whose ``__init__`` adds the model and pipeline
names to ModelScope's index of registered classes (``registration.py``). So
``modelscope server --model_id OWNER/REPO --revision R`` serves a repo whose configuration.json
names ``sdxl-base-refiner-pipeline`` without any extra import or ``trust_remote_code``: ModelScope
imports the pipeline module when it builds the pipeline. Nothing heavy (torch, diffusers,
``modelscope.pipelines``) is imported here or in ``register``: this runs for every ``modelscope``
command, ``--help`` included.
"""
from __future__ import annotations

import os
import sys
from argparse import Namespace
from typing import Any

from modelscope_hub.cli.base import CLICommand

from . import DESCRIPTION, add_subcommands, run

NAME = 'sdxl'
#: `modelscope server` answers callers on the network: they must not make it read its own files as
#: pictures (inputs/images.py reads this variable; the server's process loads this plugin).
PICTURE_PATHS_ENV = 'MODELSCOPE_SDXL_PICTURE_PATHS'


def serving(argv: list) -> bool:
    """Whether `argv` is ``modelscope server ...`` (a global option's value, ``--token X``, may come first)."""
    words = [a for a in argv[1:] if not a.startswith('-')]
    return bool(words) and words[0] != NAME and 'server' in words[:2]


if serving(sys.argv):
    os.environ.setdefault(PICTURE_PATHS_ENV, '0')


class SDXLCommand(CLICommand):
    """``modelscope sdxl generate|schema|...``: the ``modelscope-sdxl`` command under ``modelscope``."""

    name = NAME

    @staticmethod
    def register(subparsers: Any) -> None:
        parser = subparsers.add_parser(NAME, help='SDXL base + refiner: generate images, print the parameter schema',
                                       description=DESCRIPTION)
        add_subcommands(parser)
        parser.set_defaults(_command=SDXLCommand)

    def execute(self) -> None:
        _apply_hub_options(self.args)
        code = run(self.args)
        if code:
            raise SystemExit(code)


def _apply_hub_options(args: Namespace) -> None:
    """Honour the ``modelscope`` command's global --endpoint and --token for the downloads."""
    endpoint = getattr(args, 'endpoint', None)
    token = getattr(args, 'token', None)
    if endpoint:
        endpoint = endpoint.strip().rstrip('/')
        if not endpoint.startswith(('http://', 'https://')):
            endpoint = 'https://' + endpoint
        os.environ['MODELSCOPE_ENDPOINT'] = endpoint
    if token:
        os.environ['MODELSCOPE_API_TOKEN'] = token
    if endpoint or token:
        from modelscope_hub.config import set_default_config

        set_default_config(None)  # the client reads its settings again, from the variables above
