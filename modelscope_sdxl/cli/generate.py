"""``modelscope-sdxl generate``: a prompt (or a PNG's parameters) into PNG files that carry them.

    modelscope-sdxl generate "a dog" --seed 1 --steps 20 --out dog.png
    modelscope-sdxl generate --from-png dog.png --out again.png      # the same pixels
    modelscope-sdxl generate --from-png dog.png --seed 2 --out other.png

Every PNG holds the prompt and every parameter of the call, the seed included, plus the model and
revisions it was made with (:func:`modelscope_sdxl.cli.png.save_png`); ``--from-png`` reads them
back, and flags given alongside override them. Without ``--model`` (and without ``--from-png``) the
mini model shipped in the package draws the prompt (docs/mini-model.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List

from ..limits import RequestLimits, check_prompt_lengths
from ..parameters import PARAMS, PARAMS_BY_NAME, bucket_for_aspect_ratio, check_names, check_value
from .errors import CommandError
from .quiet import quiet_libraries, silent_stderr, verbose
from .sources import DEFAULT_MODEL, SOURCE_KEYS, ModelSource, add_model_arguments

# Short flags for the parameters typed most often.
ALIASES = {'num_inference_steps': ['--steps'], 'num_images_per_prompt': ['--num-images']}


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
    add_model_arguments(parser, extra_model_help=". With --from-png: the file's model")
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
    check_names(params, where=f'{source}: ')
    check_prompt_lengths(params, RequestLimits())  # the pipeline's default caps, before anything loads
    for name, value in params.items():
        check_value(PARAMS_BY_NAME[name], value)
    if params.get('aspect_ratio') is not None:
        bucket_for_aspect_ratio(params['aspect_ratio'], 1024, 8)  # raises on a malformed ratio
    if params.get('text') is None:
        raise CommandError('give a PROMPT, or --from-png FILE to make the image of a PNG again')


def check_png_source(source: Dict[str, Any], path: str) -> None:
    """A PNG's model fields must be non-empty strings (an empty model must not mean the default model)."""
    for key, value in source.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise CommandError(f'--from-png: the {key} in {path!r} must be a non-empty string, got {value!r:.100}')


@dataclass
class GenerateJob:
    parameters: Dict[str, Any]
    source: ModelSource


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
        check_png_source(source, args.from_png)
        from_file = record
    refiner_removed = args.refiner is not None and args.refiner.lower() == 'none'
    flags = parameters_from_flags(args)
    params = merge_parameters(from_file, flags, refiner_removed=refiner_removed)
    check_parameters(params, f'--from-png {args.from_png}' if args.from_png else 'parameters')
    _check_out(args.out)

    if args.model is not None:
        model, revision = args.model, args.revision
    else:
        model = source.get('model') or DEFAULT_MODEL
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
    return GenerateJob(params, ModelSource(model, revision, refiner, refiner_revision, args.device,
                                           getattr(args, 'allow_pickle', False)).check())


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
    with quiet_libraries(enabled=not verbose(args)), silent_stderr(args.quiet and not verbose(args)):
        pipe = job.source.build_pipeline(progress_bar=not args.quiet)
        output = pipe(dict(job.parameters))
    paths = save_images(output, args.out, job.source.record())
    for path in paths:
        print(path)
    if not args.quiet:
        print(f"seed: {output['seed']}", file=sys.stderr)
    return 0
