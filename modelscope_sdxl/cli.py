"""``modelscope-sdxl generate PROMPT``: images from a shell, written as PNG files.

Without ``--model`` it runs on the tiny offline model (built on first use under
the cache folder), which has random weights and so draws noise; name a hub id
such as ``AI-ModelScope/stable-diffusion-xl-base-1.0`` for real images.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from .parameters import PARAMS

TINY_MODEL = 'tiny'
# Short flags for the parameters typed most often.
ALIASES = {'num_inference_steps': ['--steps'], 'num_images_per_prompt': ['--num-images']}


def default_cache_dir() -> str:
    root = os.environ.get('MODELSCOPE_SDXL_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'modelscope_sdxl')
    return root


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='modelscope-sdxl', description='SDXL base + refiner on ModelScope.')
    sub = parser.add_subparsers(dest='command', required=True)
    gen = sub.add_parser('generate', help='make images from a prompt and write them as PNG files')
    gen.add_argument('prompt', help='the prompt (the pipeline input\'s "text")')
    for p in PARAMS:
        if p.name == 'text':
            continue
        flags = [_flag(p.name)] + ALIASES.get(p.name, [])
        if p.type == 'boolean':
            gen.add_argument(*flags, dest=p.name, action='store_true', default=None, help=p.description)
        elif p.type == 'size':
            gen.add_argument(*flags, dest=p.name, type=int, nargs=2, metavar=('A', 'B'), default=None,
                             help=p.description)
        else:
            kind = {'integer': int, 'number': float, 'string': str}[p.type]
            gen.add_argument(*flags, dest=p.name, type=kind, default=None, choices=list(p.choices) or None,
                             help=p.description)
    gen.add_argument('--model', default=TINY_MODEL,
                     help="hub id or local folder of the base model; 'tiny' (default) is the offline tiny model")
    gen.add_argument('--revision', default=None, help='revision of a hub model')
    gen.add_argument('--refiner', default=None,
                     help="refiner hub id or folder (default: the model's configuration.json); 'none' for base only")
    gen.add_argument('--refiner-revision', default=None, help='revision of the refiner repo')
    gen.add_argument('--device', default='cpu', help="'cpu', 'gpu' or 'cuda:N' (default: cpu)")
    gen.add_argument('--out', default='result.png',
                     help='output PNG; with several images, -1, -2, ... are added before .png')
    schema = sub.add_parser('schema', help='print the JSON Schema of every generation parameter')
    schema.add_argument('--markdown', action='store_true', help='print docs/parameters.md instead')
    return parser


def output_paths(out: str, count: int) -> List[str]:
    stem, ext = os.path.splitext(out)
    ext = ext or '.png'
    if count == 1:
        return [stem + ext]
    return [f'{stem}-{i + 1}{ext}' for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    import cv2
    from modelscope.pipelines import pipeline

    from .loading import BASE_FILES, resolve_folder
    from .names import PIPELINE_TYPE, TASK
    from .tiny_models import build_tiny_sdxl

    if args.model == TINY_MODEL:
        model, _ = build_tiny_sdxl(os.path.join(default_cache_dir(), 'tiny'))
    else:
        # Fetch only the files the pipeline reads, at the pinned revision.
        model = resolve_folder(args.model, args.revision, BASE_FILES)
    pipe_kwargs: Dict[str, Any] = {'device': args.device}
    if args.refiner is not None:
        pipe_kwargs['refiner'] = None if args.refiner.lower() == 'none' else args.refiner
    if args.refiner_revision is not None:
        pipe_kwargs['refiner_revision'] = args.refiner_revision
    pipe = pipeline(task=TASK, model=model, pipeline_name=PIPELINE_TYPE, **pipe_kwargs)
    params = {p.name: getattr(args, p.name) for p in PARAMS
              if p.name != 'text' and getattr(args, p.name) is not None}
    output = pipe({'text': args.prompt}, **params)
    images = output['output_imgs']
    for path, image in zip(output_paths(args.out, len(images)), images):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not cv2.imwrite(path, image):
            raise OSError(f'could not write {path}')
        print(path)
    print(f"seed: {output['seed']}", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == 'schema':
        import json

        from .parameters import json_schema, parameters_markdown
        print(parameters_markdown() if args.markdown else json.dumps(json_schema(), indent=2))
        return 0
    try:
        return _generate(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f'modelscope-sdxl: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
