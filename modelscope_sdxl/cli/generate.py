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
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List

from ..inputs.limits import RequestLimits, check_prompt_lengths
from ..parameters import (MAX_SEED, PARAMS, PARAMS_BY_NAME, PICTURES, bucket_for_aspect_ratio, check_names,
                          check_value)
from ..stages.schedulers import SCHEDULER_NAMES
from .errors import CommandError
from .flags import draw_seed, sampler_name, seed_value, with_default
from .lora_args import LORA_KEY, add_lora_arguments, looks_like_hub_id, lora_for_pipeline
from .outputs import OutputNames
from .quiet import quiet_libraries, silent_stderr, verbose
from .sources import BUILTIN_MODELS, DEFAULT_MODEL, SOURCE_KEYS, ModelSource, add_model_arguments
from .threads import use_cli_threads

# Short flags for the parameters typed most often, and A1111's / diffusers' words for them.
ALIASES = {'num_inference_steps': ['--steps'], 'num_images_per_prompt': ['--num-images'], 'mask_image': ['--mask'],
           'guidance_scale': ['--cfg', '--cfg-scale'], 'scheduler': ['--sampler'], 'width': ['-W'],
           'height': ['-H']}
# Flags whose value is a file path.
_METAVARS = {'image': 'PATH', 'mask_image': 'PATH'}
# Parameters whose flags read their value in their own way (cli/flags.py).
VALUE_TYPES = {'seed': seed_value, 'scheduler': sampler_name}
# Help lines the table's descriptions do not say for a command line.
CLI_HELP = {'seed': ' -1: a random seed.',
            'scheduler': " A1111's names are accepted too: 'DPM++ 2M Karras', 'Euler a'.",
            'prompt_weighting': ' (default here: on whenever a prompt holds ( ) or [ ]; the Python API: off); '
                                '--no-prompt-weighting reads them as text.'}


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for every generation parameter but the prompt, generated from the PARAMS table."""
    group = parser.add_argument_group('generation parameters (docs/parameters.md)')
    for p in PARAMS:
        if p.name == 'text':
            continue
        flags = [_flag(p.name)] + ALIASES.get(p.name, [])
        help_text = p.description + CLI_HELP.get(p.name, '')
        if p.choices:
            help_text += ' One of: ' + ', '.join(p.choices) + '.'
        help_text = with_default(help_text, p.default)
        if p.type == 'boolean':
            group.add_argument(*flags, dest=p.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif p.type == 'size':
            group.add_argument(*flags, dest=p.name, type=int, nargs=2, default=None, help=help_text,
                               metavar=('TOP', 'LEFT') if 'crops' in p.name else ('HEIGHT', 'WIDTH'))
        else:
            kind = VALUE_TYPES.get(p.name) or {'integer': int, 'number': float, 'string': str, 'image': str,
                                               'mask': str}[p.type]
            group.add_argument(*flags, dest=p.name, type=kind, default=None, choices=list(p.choices) or None,
                               metavar=_METAVARS.get(p.name) or ('NAME' if p.choices else None), help=help_text)


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
    parser.add_argument('-o', '--out', default='result.png',
                        help='output PNG (default: result.png). Several images are named OUT-INDEX-SEED.png; '
                        'an existing file is kept and the next free name used, unless --overwrite')
    parser.add_argument('--overwrite', action='store_true', help='replace existing files of the same name')
    parser.add_argument('-n', '--batch-count', type=int, default=1, metavar='N',
                        help='calls to make, one after the other (default: 1); call k starts at seed + k * '
                        '--num-images, so every image has its own seed')
    parser.add_argument('--quiet', action='store_true',
                        help='nothing on stderr but errors: no download or progress bars, no seed line')
    parser.add_argument('--verbose', dest='sdxl_verbose', action='store_true',
                        help="keep the libraries' log lines and print a traceback on errors")
    add_model_arguments(parser, extra_model_help=". With --from-png: the file's model")
    add_lora_arguments(parser)
    add_parameter_arguments(parser)
    return parser


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
    if 'aspect_ratio' in flags or flags.get('image') is not None:
        merged.pop('height', None)
        merged.pop('width', None)
    if 'height' in flags or 'width' in flags or flags.get('image') is not None:
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
    """A checked ``generate`` command: what to call, how often, with which model and LoRAs."""
    parameters: Dict[str, Any]  # as recorded in the PNGs (the prompt with its <lora:...> tags)
    source: ModelSource
    encoded: Dict[str, Any] = field(default_factory=dict)  # as given to the pipeline (tags taken out)
    lora: List[Dict[str, Any]] = field(default_factory=list)  # the pipeline's lora=
    lora_record: List[Dict[str, Any]] = field(default_factory=list)  # what the PNGs record of --lora
    batch_count: int = 1
    notes: List[str] = field(default_factory=list)  # printed on stderr unless --quiet

    def call_parameters(self, k: int) -> Dict[str, Any]:
        """The pipeline input of call k of --batch-count: its first seed follows the previous call's."""
        params = dict(self.encoded)
        if k:
            params['seed'] += k * params.get('num_images_per_prompt', 1)
        return params


_WEIGHTING = re.compile(r'[()\[\]]')


def default_prompt_weighting(params: Dict[str, Any]) -> None:
    """The command line reads A1111 weighting by default: on when a prompt holds ( ) or [ ] and
    neither a flag nor the file said otherwise (the Python API's default stays off)."""
    texts = [params.get(k) for k in ('text', 'prompt_2', 'negative_prompt', 'negative_prompt_2')]
    if 'prompt_weighting' not in params and any(isinstance(t, str) and _WEIGHTING.search(t) for t in texts):
        params['prompt_weighting'] = True


def check_batch_count(args: argparse.Namespace, params: Dict[str, Any]) -> int:
    """--batch-count, checked; with several calls the first seed is fixed now so that the rest follow."""
    count = args.batch_count
    if count < 1:
        raise CommandError(f'--batch-count must be an integer >= 1, got {count}')
    if count > 1 and params.get('seed') is None:
        params['seed'] = draw_seed()
    images = params.get('num_images_per_prompt', 1)
    if params.get('seed') is not None and isinstance(images, int) and \
            params['seed'] + count * images - 1 > MAX_SEED:
        raise CommandError(f'--seed {params["seed"]} with --batch-count {count} x --num-images {images} passes the '
                           f'largest seed, {MAX_SEED}')
    return count


def file_model(model: Any, args: argparse.Namespace, notes: List[str]) -> Any:
    """A PNG's `model`, when no --model is given: a built-in name, a hub id or an existing path.
    A1111 records checkpoint names (``sd_xl_base_1.0``) that are none of these: they are never
    sent to the hub; the command asks for --model instead."""
    if not isinstance(model, str) or model in BUILTIN_MODELS or looks_like_hub_id(model) or \
            os.path.exists(os.path.expanduser(model)):
        if args.model is None:
            return model
        return None
    if args.model is not None:
        notes.append(f"note: --from-png: the file's model {model!r} is not a hub id or a path here; "
                     f'using --model {args.model}')
        return None
    raise CommandError(f"--from-png: the file's model {model!r} is neither a hub id (owner/name) nor a local "
                       'path (A1111 records checkpoint names); give the model with --model HUB_ID_OR_FOLDER')


def _check_file_sampler(from_file: Dict[str, Any], flags: Dict[str, Any]) -> None:
    scheduler = from_file.get('scheduler')
    if 'scheduler' not in flags and isinstance(scheduler, str) and scheduler not in SCHEDULER_NAMES:
        raise CommandError(f"--from-png: the file's sampler {scheduler!r} has no equivalent here; choose one with "
                           f"--sampler ({', '.join(SCHEDULER_NAMES)})")


def plan_generate(args: argparse.Namespace) -> GenerateJob:
    """Parameters and model of a ``generate`` command line, checked, before anything is loaded."""
    from_file: Dict[str, Any] = {}
    source: Dict[str, Any] = {}
    lora_recorded: Any = None
    notes: List[str] = []
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
        lora_recorded = record.pop(LORA_KEY, None)
        _check_pictures(args, {k: record.pop(k) for k in PICTURES if isinstance(record.get(k), dict)})
        from_file = record
    refiner_removed = args.refiner is not None and args.refiner.lower() == 'none'
    flags = parameters_from_flags(args)
    _check_file_sampler(from_file, flags)
    params = merge_parameters(from_file, flags, refiner_removed=refiner_removed)
    default_prompt_weighting(params)
    check_parameters(params, f'--from-png {args.from_png}' if args.from_png else 'parameters')
    _check_out(args.out)
    batch_count = check_batch_count(args, params)

    if 'model' in source:
        source['model'] = file_model(source['model'], args, notes)
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
    encoded, lora, lora_record = lora_for_pipeline(params, args.lora, lora_recorded, args.lora_dir)
    model_source = ModelSource(model, revision, refiner, refiner_revision, args.device,
                               dtype=getattr(args, 'dtype', None), allow_pickle=getattr(args, 'allow_pickle', False))
    return GenerateJob(params, model_source.check(), encoded=encoded, lora=lora, lora_record=lora_record,
                       batch_count=batch_count, notes=notes)


def save_images(output: Dict[str, Any], paths: List[str], extra: Dict[str, Any],
                recorded: Dict[str, Any]) -> List[str]:
    """Write the pipeline output's images as PNG files, each carrying its own parameters (with the
    prompt as given, `recorded`) and `extra`."""
    from .png import image_parameters, save_png

    images = output['output_imgs']
    parameters = {**output['parameters'], **{k: recorded[k] for k in ('text', 'prompt_2') if k in recorded}}
    for path, image, own in zip(paths, images, image_parameters(parameters, output['seeds'])):
        save_png(path, image, own, extra)
    return paths


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars belong to a terminal: in a log they are carriage-return noise."""
    return not args.quiet and sys.stderr.isatty()


def _check_pictures(args: argparse.Namespace, recorded: Dict[str, Any]) -> None:
    """A PNG made from a picture needs that picture again: name the file it was made from, and note a
    different one (its pixels will differ)."""
    from ..inputs.images import file_sha256

    for name, record in recorded.items():
        flag = '--image' if name == 'image' else '--mask'
        described = f"{record.get('file') or 'base64 data'!r} (SHA-256 {record.get('sha256')})"
        given = getattr(args, name, None)
        if given is None:
            raise CommandError(f'--from-png: {args.from_png} was made from the {name} {described}; '
                               f'give it with {flag} PATH')
        if os.path.isfile(given) and file_sha256(given) != record.get('sha256'):
            print(f'note: {flag} {given} is not the {name} {args.from_png} was made from ({described}); '
                  'the result will differ', file=sys.stderr)


def generate_command(args: argparse.Namespace) -> int:
    from .png import picture_records

    job = plan_generate(args)
    if not args.quiet:
        for note in job.notes:
            print(note, file=sys.stderr)
    extra = {**job.source.record(), **picture_records(job.parameters)}
    if job.lora_record:
        extra[LORA_KEY] = job.lora_record
    total = job.batch_count * job.parameters.get('num_images_per_prompt', 1)
    names = OutputNames(args.out, total, overwrite=args.overwrite)
    seeds: List[int] = []
    with quiet_libraries(enabled=not verbose(args)), silent_stderr(args.quiet and not verbose(args)):
        use_cli_threads()
        pipe = job.source.build_pipeline(progress_bar=show_progress(args), lora=job.lora or None)
        for k in range(job.batch_count):
            output = pipe(job.call_parameters(k))
            for path in save_images(output, names.take(output['seeds']), extra, job.parameters):
                print(path, flush=True)
            seeds += output['seeds']
    if not args.quiet:
        if names.moved:
            print(f'note: {args.out} exists; wrote {names.moved} instead (--overwrite replaces it)', file=sys.stderr)
        print(f'seed: {seeds[0]}' if len(seeds) == 1 else f"seeds: {', '.join(map(str, seeds))}", file=sys.stderr)
    return 0
