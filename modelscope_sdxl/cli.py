"""``modelscope-sdxl``: images from a shell, written as PNG files that carry their parameters.

    modelscope-sdxl generate "a dog" --seed 1 --steps 20 --out dog.png
    modelscope-sdxl generate --from-png dog.png --out again.png      # the same pixels
    modelscope-sdxl generate --from-png dog.png --seed 2 --out other.png
    modelscope-sdxl schema                                            # JSON Schema of every parameter
    modelscope-sdxl webui                                             # a web page (webui.py)

The same commands run as ``modelscope sdxl ...`` (see ``modelscope_plugin.py``) and as
``python -m modelscope_sdxl ...``.

Every PNG holds the prompt and every parameter of the call, the seed included, plus the model and
revisions it was made with (:func:`modelscope_sdxl.png.save_png`); ``--from-png`` reads them back,
and flags given alongside override them.

Without ``--model`` (and without ``--from-png``) ``generate`` uses :func:`default_model`: the mini
model shipped in the package, which draws flat shapes from prompts such as "a red circle on a blue
background" (docs/mini-model.md). Name a hub id such as ``AI-ModelScope/stable-diffusion-xl-base-1.0``
for real SDXL images.

Subcommands come from :data:`SUBCOMMANDS`: each is a :class:`Subcommand` whose ``add_parser(subparsers)``
adds its parser and whose ``run(args)`` returns the exit code. The parser is built for every
invocation (``--help`` included), so ``add_parser`` must not import anything heavy; ``run`` does.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

from .batch import add_batch_parser, batch_command
from .builtin_models import (BUILTIN_HELP, BUILTIN_MODELS, DEFAULT_MODEL, SOURCE_KEYS, builtin_model_folder,
                             looks_local, source_record)
from .parameters import PARAMS, PARAMS_BY_NAME
from .webui import add_webui_parser, webui_command

PROG = 'modelscope-sdxl'
DESCRIPTION = ('SDXL base + refiner on ModelScope: images from a prompt, written as PNG files that carry '
               'their parameters.')
# Short flags for the parameters typed most often.
ALIASES = {'num_inference_steps': ['--steps'], 'num_images_per_prompt': ['--num-images']}
# Loggers whose INFO/WARNING lines are noise on a command line.
_NOISY_LOGGERS = ('modelscope', 'modelscope_hub')


class CommandError(Exception):
    """A command line that cannot run as given (exit code 2)."""


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: ``add_parser(subparsers)`` adds and returns its parser; ``run(args)`` -> exit code."""
    add_parser: Callable[[Any], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------------------------------
# Models


def default_model() -> str:
    """The model ``generate`` uses without --model: the mini model shipped in the package."""
    return DEFAULT_MODEL


def load_pipeline(model: str, revision: Optional[str] = None, refiner: Optional[str] = None,
                  refiner_revision: Optional[str] = None, device: Optional[str] = None,
                  progress_bar: bool = False, max_images_per_call: int = 8) -> Any:
    """This package's pipeline on `model`: a built-in name, a hub id (only the files the pipeline
    reads are downloaded, at `revision`) or a local folder. `refiner` 'none' runs the base alone; None keeps
    the refiner of the model's configuration.json."""
    from modelscope.pipelines import pipeline

    from .loading import check_device
    from .names import PIPELINE_TYPE, TASK

    kwargs: Dict[str, Any] = {'device': check_device(device or _default_device()), 'progress_bar': progress_bar,
                              'max_images_per_call': max_images_per_call}
    # ModelScope's builder is given an absolute folder: a relative 'a/b' would look like a hub id to it.
    if model in BUILTIN_MODELS:
        if revision is not None:
            raise CommandError(f'--revision applies to a hub model, not to the built-in {model!r} model')
        folder = builtin_model_folder(model)
    elif looks_local(model):
        if revision is not None:
            raise CommandError(f'--revision applies to a hub model; {model!r} is a local folder')
        folder = os.path.abspath(os.path.expanduser(model))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'model folder {model!r} does not exist')
    else:
        # Fetched here rather than by the pipeline, so that ModelScope's builder sees a folder and
        # does not ask the hub about the id first.
        from .loading import BASE_FILES, resolve_folder

        try:
            folder = resolve_folder(model, revision, BASE_FILES)
        except OSError as exc:
            if http_status(exc) != 404:
                raise
            raise CommandError(f'{model!r} at revision {revision or "master"!r} is not on the hub '
                               f'({str(exc).splitlines()[0]})') from exc
    if refiner is not None:
        kwargs['refiner'] = None if refiner.lower() == 'none' else refiner
    if refiner_revision is not None:
        kwargs['refiner_revision'] = refiner_revision
    return pipeline(task=TASK, model=folder, pipeline_name=PIPELINE_TYPE, **kwargs)


def _default_device() -> str:
    import torch

    return 'gpu' if torch.cuda.is_available() else 'cpu'


# ------------------------------------------------------------------------------------------------
# Quiet libraries


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Hide ModelScope's, transformers' and diffusers' INFO/WARNING lines, Python warnings and the
    libraries' loading bars for the duration (the pipeline's own progress bars stay). Restores all."""
    if not enabled:
        yield
        return
    quiet = _BelowError()
    try:  # the hub client sets its logger's level when first used: have it do so now
        from modelscope_hub.utils.logger import get_logger

        get_logger()
    except ImportError:  # pragma: no cover - modelscope_hub is a dependency of modelscope
        pass
    saved_levels = []
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        # ModelScope resets its logger's level on every get_logger() call, so a filter does the work;
        # the level covers child loggers.
        logger.addFilter(quiet)
        saved_levels.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    restore: List[Callable[[], None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            for module_name in ('transformers.utils.logging', 'diffusers.utils.logging'):
                restore.append(_quiet_hf_logging(module_name))
            yield
        finally:
            for undo in reversed(restore):
                undo()
            for logger, level in saved_levels:
                logger.removeFilter(quiet)
                logger.setLevel(level)


@contextlib.contextmanager
def _silent_stderr(enabled: bool) -> Iterator[None]:
    """--quiet: nothing on stderr while the model loads and runs, download bars included (an error
    still ends as the one line printed after this)."""
    if not enabled:
        yield
        return
    with open(os.devnull, 'w') as devnull, contextlib.redirect_stderr(devnull):
        yield


def _quiet_hf_logging(module_name: str) -> Callable[[], None]:
    import importlib

    try:
        hf_logging = importlib.import_module(module_name)
    except ImportError:
        return lambda: None
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def undo() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return undo


# ------------------------------------------------------------------------------------------------
# generate


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for every generation parameter but the prompt, generated from the PARAMS table."""
    group = parser.add_argument_group('generation parameters (docs/parameters.md)')
    for p in PARAMS:
        if p.name == 'text':
            continue
        flags = [_flag(p.name)] + ALIASES.get(p.name, [])
        if p.type == 'boolean':
            group.add_argument(*flags, dest=p.name, action=argparse.BooleanOptionalAction, default=None,
                               help=p.description)
        elif p.type == 'size':
            group.add_argument(*flags, dest=p.name, type=int, nargs=2, default=None, help=p.description,
                               metavar=('TOP', 'LEFT') if 'crops' in p.name else ('HEIGHT', 'WIDTH'))
        else:
            kind = {'integer': int, 'number': float, 'string': str}[p.type]
            group.add_argument(*flags, dest=p.name, type=kind, default=None, choices=list(p.choices) or None,
                               help=p.description)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --revision, --refiner, --refiner-revision, --device."""
    group = parser.add_argument_group('model')
    group.add_argument('--model', default=None,
                       help=f"hub id or local folder of the base model, or a built-in model: {BUILTIN_HELP}. "
                       "With --from-png: the file's model")
    group.add_argument('--revision', default=None, help="revision (tag, branch or commit) of a hub model")
    group.add_argument('--refiner', default=None,
                       help="refiner hub id or folder (default: the model's configuration.json); 'none' for the "
                       'base alone')
    group.add_argument('--refiner-revision', default=None, help='revision of the refiner repo')
    group.add_argument('--device', default=None,
                       help="'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N' (default: 'gpu' where there is one, else "
                       "'cpu'); the same pixels come back on the same kind of device")


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'generate', help='make images from a prompt and write them as PNG files',
        description='Make images from a prompt and write them as PNG files whose text chunks hold the prompt, '
        'every parameter (the seed included) and the model, so that --from-png makes them again.')
    parser.add_argument('prompt', nargs='?', default=None,
                        help="the prompt (the pipeline input's \"text\"); with --from-png: overrides the file's")
    parser.add_argument('--from-png', metavar='FILE', default=None,
                        help="make the image of a PNG written by this command again: its prompt, parameters, "
                        'model and revisions; flags given alongside override them')
    parser.add_argument('--out', default='result.png',
                        help='output PNG (default: result.png); with several images, -1, -2, ... are added '
                        'before .png')
    parser.add_argument('--quiet', action='store_true',
                        help='nothing on stderr but errors: no download or progress bars, no seed line')
    parser.add_argument('--verbose', dest='sdxl_verbose', action='store_true',
                        help="keep the libraries' log lines and print a traceback on errors")
    add_model_arguments(parser)
    add_parameter_arguments(parser)
    return parser


def output_paths(out: str, count: int) -> List[str]:
    stem, ext = os.path.splitext(out)
    ext = ext or '.png'
    if count == 1:
        return [stem + ext]
    return [f'{stem}-{i + 1}{ext}' for i in range(count)]


def _check_out(out: str) -> None:
    ext = os.path.splitext(out)[1]
    if os.path.isdir(out) or out.endswith(('/', os.sep)):
        raise CommandError(f'--out must be a PNG file path, got the folder {out!r}')
    if ext.lower() not in ('', '.png'):
        raise CommandError(f'--out must be a .png file, got {out!r}')


def parameters_from_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The generation parameters given as flags (the prompt included), as pipeline inputs."""
    given = {p.name: getattr(args, p.name) for p in PARAMS
             if p.name != 'text' and getattr(args, p.name, None) is not None}
    if getattr(args, 'prompt', None) is not None:
        given['text'] = args.prompt
    return given


def merge_parameters(from_file: Dict[str, Any], flags: Dict[str, Any],
                     refiner_removed: bool = False) -> Dict[str, Any]:
    """A file's parameters overridden by flags, without the file's values that the flags make
    inapplicable (height/width under --aspect-ratio; another refiner mode's parameters)."""
    merged = dict(from_file)
    if 'aspect_ratio' in flags:
        merged.pop('height', None)
        merged.pop('width', None)
    if 'height' in flags or 'width' in flags:
        merged.pop('aspect_ratio', None)
    mode = flags.get('refiner_mode')
    if mode is None and refiner_removed and merged.get('refiner_mode') not in (None, 'none'):
        merged.pop('refiner_mode')
        mode = 'none'
    if mode is not None:
        for p in PARAMS:
            if p.name in merged and mode not in p.refiner_modes:
                merged.pop(p.name)
    merged.update(flags)
    return merged


def check_parameters(params: Dict[str, Any], source: str) -> None:
    """Names and values checked against the table before any model is loaded (the model-dependent
    checks follow in the pipeline)."""
    from .parameters import _check_value, bucket_for_aspect_ratio

    unknown = sorted(set(params) - set(PARAMS_BY_NAME))
    if unknown:
        raise CommandError(f'{source}: unknown parameter(s) {", ".join(map(repr, unknown))}; '
                           f'known parameters: {", ".join(p.name for p in PARAMS)}')
    for name, value in params.items():
        _check_value(PARAMS_BY_NAME[name], value)
    if params.get('aspect_ratio') is not None:
        bucket_for_aspect_ratio(params['aspect_ratio'], 1024, 8)  # raises on a malformed ratio
    if params.get('text') is None:
        raise CommandError('give a PROMPT, or --from-png FILE to make the image of a PNG again')


@dataclass
class GenerateJob:
    parameters: Dict[str, Any]
    model: str
    revision: Optional[str]
    refiner: Optional[str]
    refiner_revision: Optional[str]


def plan_generate(args: argparse.Namespace) -> GenerateJob:
    """Parameters and model of a ``generate`` command line, checked, before anything is loaded."""
    from_file: Dict[str, Any] = {}
    source: Dict[str, Any] = {}
    if args.from_png is not None:
        from .png import read_png_parameters

        if not os.path.isfile(args.from_png):
            raise FileNotFoundError(f'--from-png: no such file: {args.from_png!r}')
        try:
            record = read_png_parameters(args.from_png)
        except ValueError as exc:  # not a PNG we can read, or no parameters in it
            raise CommandError(f'--from-png: {exc}') from exc
        except OSError as exc:
            raise CommandError(f'--from-png: {args.from_png!r} is not a readable PNG file: {exc}') from exc
        if not isinstance(record, dict):
            raise CommandError(f'--from-png: the parameters in {args.from_png!r} are not a JSON object')
        source = {k: record.pop(k) for k in SOURCE_KEYS if k in record}
        from_file = record
    refiner_removed = args.refiner is not None and args.refiner.lower() == 'none'
    flags = parameters_from_flags(args)
    params = merge_parameters(from_file, flags, refiner_removed=refiner_removed)
    check_parameters(params, f'--from-png {args.from_png}' if args.from_png else 'parameters')
    _check_out(args.out)

    if args.model is not None:
        model, revision = args.model, args.revision
    else:
        model = source.get('model') or default_model()
        revision = args.revision if args.revision is not None else source.get('model_revision')
    if args.refiner is not None:
        refiner, refiner_revision = args.refiner, args.refiner_revision
    else:
        refiner = source.get('refiner') if args.model is None else None
        refiner_revision = args.refiner_revision if args.refiner_revision is not None else (
            source.get('refiner_revision') if args.model is None else None)
    for key, value in (('model', model), ('model revision', revision), ('refiner', refiner),
                       ('refiner revision', refiner_revision)):
        if value is not None and not isinstance(value, str):
            raise CommandError(f'--from-png: the {key} in {args.from_png!r} must be a string, got {value!r}')
    return GenerateJob(params, model, revision, refiner, refiner_revision)


def save_images(output: Dict[str, Any], out: str, extra: Dict[str, Any]) -> List[str]:
    """Write the pipeline output's images as PNG files carrying output['parameters'] and `extra`."""
    from .png import save_png

    images = output['output_imgs']
    paths = output_paths(out, len(images))
    for path, image in zip(paths, images):
        save_png(path, image, output['parameters'], extra)
    return paths


def generate_command(args: argparse.Namespace) -> int:
    job = plan_generate(args)
    with quiet_libraries(enabled=not _verbose(args)), _silent_stderr(args.quiet and not _verbose(args)):
        pipe = load_pipeline(job.model, job.revision, job.refiner, job.refiner_revision, args.device,
                             progress_bar=not args.quiet)
        output = pipe(dict(job.parameters))
    paths = save_images(output, args.out, source_record(job.model, job.revision, job.refiner, job.refiner_revision))
    for path in paths:
        print(path)
    if not args.quiet:
        print(f"seed: {output['seed']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# schema


def add_schema_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser('schema', help='print the JSON Schema of every generation parameter',
                                   description='Print the JSON Schema of every generation parameter.')
    parser.add_argument('--markdown', action='store_true', help='print docs/parameters.md instead')
    return parser


def schema_command(args: argparse.Namespace) -> int:
    import json

    from .parameters import json_schema, parameters_markdown

    print(parameters_markdown() if args.markdown else json.dumps(json_schema(), indent=2))
    return 0


# ------------------------------------------------------------------------------------------------
# Parser and entry point

#: Every subcommand, in the order ``--help`` lists them.
SUBCOMMANDS: List[Subcommand] = [
    Subcommand(add_generate_parser, generate_command),
    Subcommand(add_schema_parser, schema_command),
    Subcommand(add_batch_parser, batch_command),
    Subcommand(add_webui_parser, webui_command),
]


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add every subcommand of :data:`SUBCOMMANDS` to `parser` (this CLI's, or ``modelscope sdxl``'s)."""
    sub = parser.add_subparsers(dest='sdxl_command', metavar='COMMAND', required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub).set_defaults(_sdxl_run=command.run)
    parser.set_defaults(_sdxl_prog=parser.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_subcommands(parser)
    return parser


def _verbose(args: argparse.Namespace) -> bool:
    # --verbose of `generate`, or the `modelscope` command's own -v.
    return bool(getattr(args, 'sdxl_verbose', False) or getattr(args, 'verbose', False))


def _one_line(exc: BaseException) -> str:
    return ' '.join(str(exc).split()) or type(exc).__name__


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status of a hub client error (requests' HTTPError carries the response), else None."""
    status = getattr(getattr(exc, 'response', None), 'status_code', None)
    return status if isinstance(status, int) else None


def exit_code(exc: BaseException) -> int:
    """2 for a command line that cannot run as given (bad value, missing file, repo or revision), 1 otherwise."""
    if isinstance(exc, (CommandError, ValueError, TypeError, LookupError, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError)) or http_status(exc) == 404:
        return 2
    try:
        from modelscope_hub.errors import NotExistError
    except ImportError:  # pragma: no cover - modelscope_hub is a dependency of modelscope
        return 1
    return 2 if isinstance(exc, NotExistError) else 1


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
        if _verbose(args):
            import traceback

            traceback.print_exc()
        code = exit_code(exc)
        known = code == 2 or isinstance(exc, OSError)
        # A hub client error's first line says what failed; the rest is the raw request and response.
        message = ' '.join(str(exc).splitlines()[:1]) if http_status(exc) else _one_line(exc)
        message = message if known else f'{type(exc).__name__}: {message}'
        print(f'{prog}: error: {message}', file=sys.stderr)
        return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
