"""Where a command's model comes from: a built-in word, a local folder or a hub id at a revision.

One :class:`ModelSource` (and one set of flags, :func:`add_model_arguments`) serves ``generate``,
``batch`` and the Ray workers, with one error path, so the commands cannot disagree about a model.

The built-in models:

- ``mini`` (the default): the small SDXL base + refiner trained to draw flat shapes, shipped inside
  the package (``modelscope_sdxl/mini``, docs/mini-model.md). It draws what its prompt asks.
- ``tiny``: an SDXL-shaped pair with random weights (``mini/sdxl_folders.py``), built on first use
  under :func:`default_cache_dir`. It exercises the whole pipeline in little time but draws noise.

Nothing here imports torch at import time: the names are needed to parse a command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Dict, Optional

from ..loading.dtypes import DTYPE_NAMES
from ..hub import BASE_FILES, check_device, files_to_fetch, is_local_reference, resolve_folder
from ..loading.single_file import is_single_file
from .errors import CommandError, http_status
from .files import flock

MINI_MODEL = 'mini'
TINY_MODEL = 'tiny'
DEFAULT_MODEL = MINI_MODEL
#: What a PNG records besides the parameters: where its model came from.
SOURCE_KEYS = ('model', 'model_revision', 'refiner', 'refiner_revision')


def default_cache_dir() -> str:
    """Where built models live: $MODELSCOPE_SDXL_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/modelscope_sdxl."""
    return os.environ.get('MODELSCOPE_SDXL_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'modelscope_sdxl')


def _mini_model_folder() -> str:
    from ..mini import mini_model_dir

    return mini_model_dir()


def _tiny_model_folder() -> str:
    from ..mini.sdxl_folders import build_tiny_sdxl

    root = os.path.join(default_cache_dir(), TINY_MODEL)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    # Processes on one machine share the cache: one builds, the others wait and reuse it.
    with flock(root + '.lock'):
        base_dir, _ = build_tiny_sdxl(root)
    return base_dir


#: name -> function returning the model's base folder.
BUILTIN_MODELS: Dict[str, Callable[[], str]] = {MINI_MODEL: _mini_model_folder, TINY_MODEL: _tiny_model_folder}
#: One line per built-in model, for --help texts.
BUILTIN_HELP = ("'mini' (default) draws shapes from prompts such as 'a red circle on a blue background', "
                "offline, in well under a second; 'tiny' has random weights and draws noise")


def model_record(ref: Optional[str]) -> Optional[str]:
    """A model or refiner reference that means the same from any working directory: a built-in name,
    'none', a hub id, or an absolute folder. PNGs record it; Ray workers are given it."""
    if ref is None or ref in BUILTIN_MODELS or ref.lower() == 'none' or not (is_local_reference(ref)
                                                                            or is_single_file(ref)):
        return ref
    return os.path.abspath(os.path.expanduser(ref))


def default_device() -> str:
    """'gpu' where CUDA is available, else 'cpu'."""
    import torch

    return 'gpu' if torch.cuda.is_available() else 'cpu'


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """The model a command runs: the same options for ``generate``, ``batch`` and every Ray worker.

    `model` is a built-in name ('mini', 'tiny'), a hub id or a local folder; `refiner` None keeps the
    refiner of the model's configuration.json and 'none' runs the base alone; `device` None means
    :func:`default_device`. :meth:`check` refuses what cannot be meant before anything loads.
    """
    model: str = DEFAULT_MODEL
    revision: Optional[str] = None
    refiner: Optional[str] = None
    refiner_revision: Optional[str] = None
    device: Optional[str] = None
    #: precision of the UNets and text encoders (one of DTYPE_NAMES); None: fp16 on CUDA, fp32 on a CPU
    dtype: Optional[str] = None
    allow_pickle: bool = False  # only this flag (--allow-pickle) lets pickle weights load; never a PNG or a repo

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'ModelSource':
        """The source named by :func:`add_model_arguments`' flags, checked."""
        return cls(args.model or DEFAULT_MODEL, args.revision, args.refiner, args.refiner_revision,
                   args.device, dtype=getattr(args, 'dtype', None),
                   allow_pickle=getattr(args, 'allow_pickle', False)).check()

    def check(self) -> 'ModelSource':
        """Refuse a revision that cannot apply and a malformed device, naming the flag; returns self."""
        for flag, value in (('--model', self.model), ('--revision', self.revision), ('--refiner', self.refiner),
                            ('--refiner-revision', self.refiner_revision), ('--device', self.device),
                            ('--dtype', self.dtype)):
            if value is not None and not isinstance(value, str):
                raise CommandError(f'{flag} must be a string, got {value!r}')
        if self.revision is not None:
            if self.model in BUILTIN_MODELS:
                raise CommandError(f'--revision applies to a hub model, not to the built-in {self.model!r} model')
            if is_local_reference(self.model) or is_single_file(self.model):
                raise CommandError(f'--revision applies to a hub model; {self.model!r} is a local '
                                   f'{"file" if is_single_file(self.model) else "folder"}')
        if self.device is not None:
            check_device(self.device)
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise CommandError(f'--dtype must be one of {", ".join(DTYPE_NAMES)}, got {self.dtype!r}')
        return self

    @property
    def no_refiner(self) -> bool:
        return self.refiner is not None and self.refiner.lower() == 'none'

    def record(self) -> Dict[str, Any]:
        """What a PNG records besides its parameters, so that ``--from-png`` finds the same model again."""
        values = (model_record(self.model), self.revision, model_record(self.refiner), self.refiner_revision)
        return {k: v for k, v in zip(SOURCE_KEYS, values) if v is not None}

    def with_absolute_paths(self) -> 'ModelSource':
        """Local folders as absolute paths, so that workers started elsewhere find them."""
        return dataclasses.replace(self, model=model_record(self.model), refiner=model_record(self.refiner))

    def base_folder(self) -> str:
        """The base model's local folder: built-in, a folder, or a hub snapshot of only the files the
        pipeline reads. An unknown hub repo or revision is a CommandError naming it."""
        if self.model in BUILTIN_MODELS:
            return os.path.abspath(BUILTIN_MODELS[self.model]())
        if is_single_file(self.model):
            path = os.path.abspath(os.path.expanduser(self.model))
            if not os.path.isfile(path):
                raise FileNotFoundError(f'--model: single-file checkpoint {self.model!r} does not exist')
            return path
        if is_local_reference(self.model):
            folder = os.path.abspath(os.path.expanduser(self.model))
            if not os.path.isdir(folder):
                raise FileNotFoundError(f'model folder {self.model!r} does not exist')
            return folder
        try:
            return resolve_folder(self.model, self.revision, files_to_fetch(BASE_FILES, self.allow_pickle))
        except OSError as exc:
            if http_status(exc) != 404:
                raise
            raise CommandError(f'{self.model!r} at revision {self.revision or "master"!r} is not on the hub '
                               f'({str(exc).splitlines()[0]})') from exc

    def build_pipeline(self, progress_bar: bool = False, lora: Any = None, max_images_per_call: int = 8) -> Any:
        """This package's pipeline on the source. The base is fetched here rather than by the
        pipeline, so that ModelScope's builder sees an absolute folder (a relative 'a/b' would look
        like a hub id to it) and does not ask the hub about the id first."""
        import modelscope_sdxl  # noqa: F401  (registers the pipeline, in Ray workers too)
        from modelscope.pipelines import pipeline

        from ..names import PIPELINE_TYPE, TASK

        kwargs: Dict[str, Any] = {'device': check_device(self.device or default_device()),
                                  'progress_bar': progress_bar, 'max_images_per_call': max_images_per_call}
        folder = self.base_folder()
        if self.refiner is not None:
            kwargs['refiner'] = None if self.no_refiner else self.refiner
        if self.refiner_revision is not None:
            kwargs['refiner_revision'] = self.refiner_revision
        if lora:
            kwargs['lora'] = lora  # the pipeline's lora= (cli/lora_args.py)
        if self.dtype is not None:
            kwargs['torch_dtype'] = self.dtype
        if self.allow_pickle:
            kwargs['allow_pickle'] = True
        return pipeline(task=TASK, model=folder, pipeline_name=PIPELINE_TYPE, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser, extra_model_help: str = '') -> None:
    """--model, --revision, --refiner, --refiner-revision, --device, --dtype: read back by ModelSource.from_args."""
    group = parser.add_argument_group('model')
    group.add_argument('--model', default=None,
                       help='hub id or local folder of the base model, a single-file checkpoint (a path ending in '
                       f'.safetensors, as AUTOMATIC1111 uses), or a built-in model: {BUILTIN_HELP}'
                       + extra_model_help)
    group.add_argument('--revision', default=None, help='revision (tag, branch or commit) of a hub model')
    group.add_argument('--refiner', default=None,
                       help="refiner hub id, folder or single .safetensors file (default: the model's "
                       "configuration.json); 'none' for the base alone")
    group.add_argument('--refiner-revision', default=None, help='revision of the refiner repo')
    group.add_argument('--device', default=None,
                       help="'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N' (default: 'gpu' where there is one, else "
                       "'cpu'); the same pixels come back on the same kind of device")
    group.add_argument('--dtype', default=None, choices=DTYPE_NAMES,
                       help='precision of the UNets and text encoders (the VAE stays float32); default: float16 on '
                       'a GPU, float32 on a CPU, where half precision is slower unless the CPU has native units')
    group.add_argument('--allow-pickle', action='store_true',
                       help='allow pickle weights (.bin, .ckpt, ...), which can run code when loaded; only for '
                       "models you trust (a repo's configuration.json cannot allow them)")
