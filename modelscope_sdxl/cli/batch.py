"""``modelscope-sdxl batch PROMPTS.jsonl --out DIR``: every line of a JSONL file made into PNG files.

Each line is a JSON object with the fields of a pipeline input (``{"text": "a dog", "seed": 1}``) and
an optional ``id``. Every image is written as ``DIR/<name>-<k>.png`` carrying its parameters
(:func:`modelscope_sdxl.png.save_png`), and ``DIR/manifest.jsonl`` gets one JSON line per item: what
was made (id, files, seed, parameters, time) or why not (the error). A line that is not JSON or whose
parameters are refused is recorded with its error and the others go on.

Resuming: rerunning the same command skips every item whose manifest record stands for the line as
it is now: made (``ok``, files on disk) or refused (``invalid``); everything else (new or changed
lines, ``failed`` ones, missing files) is made again. Images are written atomically (write, then
rename) and manifest lines are appended whole and fsynced, so a killed run loses only the items in
flight. A complete run rewrites the manifest with exactly one record per item, in the order of the
input file.

With ``--ray`` the same job runs through Ray Data: an actor pool of ``--workers`` workers, each of
which loads one pipeline and turns inputs into images; the images stream back to this process,
which alone writes the files and the manifest. Ray is optional (``pip install
'modelscope-sdxl[ray]'``) and imported only when ``--ray`` is given.

See docs/batch.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from .batch_items import Item, generate_item, read_items
from .batch_ray import RAY_EXTRA_HINT, Results, import_ray, run_ray
from .errors import BatchError
from .files import flock, remove_temporary_files
from .manifest import MANIFEST, Manifest, now
from .quiet import quiet_libraries, silent_stderr, verbose
from .sources import DEFAULT_MODEL, ModelSource, add_model_arguments
from .threads import use_cli_threads

# Only the standard library at import time: the CLI builds its parser, this one included, on every call.
__all__ = ['run_batch', 'BatchResult', 'BatchError', 'MANIFEST', 'read_items']


def _run_local(pending: List[Item], source: ModelSource, pipe: Any) -> Results:
    if pipe is None:
        pipe = source.build_pipeline()
    for item in pending:
        result, images = generate_item(pipe, item.input)
        yield item.id, result, images


@dataclasses.dataclass
class BatchResult:
    manifest: str
    items: int = 0  # non-blank lines of the input
    recorded: int = 0  # items recorded in this run (made or not)
    skipped: int = 0  # items whose record from an earlier run stands
    # The items' records in the final manifest, by status:
    ok: int = 0
    invalid: int = 0
    failed: int = 0

    @property
    def complete(self) -> bool:
        """Every item made."""
        return self.ok == self.items


def _remove_stale_files(out_dir: str, old: Optional[Dict[str, Any]], kept: List[str]) -> None:
    """Files an earlier record of this id listed and the new one does not (the line changed)."""
    if not old or old.get('status') != 'ok':
        return
    for name in old.get('files') or []:
        if isinstance(name, str) and name not in kept and os.path.basename(name) == name:
            path = os.path.join(out_dir, name)
            if os.path.isfile(path):
                os.unlink(path)


def run_batch(prompts: str, out_dir: str, *, model: Optional[str] = None, revision: Optional[str] = None,
              refiner: Optional[str] = None, refiner_revision: Optional[str] = None,
              device: Optional[str] = None, dtype: Optional[str] = None, allow_pickle: bool = False,
              ray_address: Optional[str] = None, workers: Optional[int] = None,
              gpus_per_worker: Optional[float] = None, cpus_per_worker: float = 1.0,
              ray_init_kwargs: Optional[Dict[str, Any]] = None, retry_invalid: bool = False, pipe: Any = None,
              on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
              log: Optional[Callable[[str], None]] = None) -> BatchResult:
    """Make every line of `prompts` into PNG files under `out_dir`, resuming what a manifest there says.

    Args:
        prompts: the JSONL input file.
        out_dir: where the PNG files and manifest.jsonl go (created if missing).
        model, revision, refiner, refiner_revision: as for ``modelscope-sdxl generate`` (model None:
            the built-in mini model); see :class:`sources.ModelSource`.
        allow_pickle: let pickle weights load (the ``--allow-pickle`` flag); see docs/reliability.md.
        device: 'cpu', 'gpu', 'cuda:N'; default: 'gpu' when CUDA is available here (on Ray: when
            workers get GPUs), else 'cpu'.
        dtype: 'float16', 'bfloat16' or 'float32' for the UNets and text encoders (``--dtype``).
        ray_address: None runs here, in this process; 'local' starts a Ray instance on this machine
            for this run; 'auto' joins the cluster this machine belongs to; anything else is a Ray
            address ('HOST:6379', 'ray://HOST:10001'). In a process that has already called
            ``ray.init``, that connection is used.
        workers: Ray workers (actors), each holding one pipeline; default: one per GPU of the
            cluster, or 1 without GPUs.
        gpus_per_worker: GPUs each worker asks for; default 1 when the cluster has GPUs, else 0.
        cpus_per_worker: CPUs each worker asks for.
        ray_init_kwargs: more arguments for ``ray.init`` (num_cpus, object_store_memory, ...).
        retry_invalid: run lines recorded as invalid again (after a change of model, say); lines
            recorded as failed are always run again.
        pipe: a pipeline already built, used instead of loading one (runs here only).
        on_record: called with each manifest record once it is durable.
        log: called with progress lines; default: print to stderr.
    """
    if log is None:
        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)
    if ray_address is not None:
        import_ray()  # fail now, with the install hint, rather than after reading the input
        if pipe is not None:
            raise ValueError('pipe= runs the batch in this process; it cannot be combined with ray_address')
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f'workers must be an integer >= 1, got {workers!r}')
    for name, value in (('gpus_per_worker', gpus_per_worker), ('cpus_per_worker', cpus_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
    source = ModelSource(model or DEFAULT_MODEL, revision, refiner, refiner_revision, device, dtype=dtype,
                         allow_pickle=allow_pickle).check()

    if not os.path.isfile(prompts):
        raise FileNotFoundError(f'prompts file {prompts!r} does not exist')
    items = read_items(prompts)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest(out_dir)
    result = BatchResult(manifest=manifest.path, items=len(items))
    with flock(out_dir, busy=BatchError(f'another batch run is writing to {out_dir}; wait for it to end')):
        removed = remove_temporary_files(out_dir)
        if removed:
            log(f'removed {len(removed)} temporary file(s) left by an interrupted run')
        manifest.load()
        manifest.rewrite(items)  # also drops a torn last line, so appends start on a fresh line
        by_id = {item.id: item for item in items}
        todo = [item for item in items if not manifest.is_done(item, retry_invalid)]
        pending = [item for item in todo if item.error is None]
        result.skipped = len(items) - len(todo)
        if result.skipped:
            log(f'{result.skipped} of {len(items)} item(s) already recorded by an earlier run')

        # Each PNG names its model, as generate's do (unknown for a pipeline passed in).
        recorded_source = source.record() if pipe is None else {}

        def record(item: Item, outcome: Dict[str, Any], images: List[Any]) -> None:
            from .png import image_parameters, picture_records, save_png

            entry: Dict[str, Any] = {'id': item.id, 'line': item.line, 'status': outcome['status']}
            if outcome['status'] == 'ok':
                files = [f'{item.name}-{k}.png' for k in range(1, len(images) + 1)]
                per_image = image_parameters(outcome['parameters'], outcome['seeds'])
                for name, image, parameters in zip(files, images, per_image):
                    save_png(os.path.join(out_dir, name), image, parameters,
                             {**recorded_source, **picture_records(item.input or {})})
                _remove_stale_files(out_dir, manifest.records.get(item.id), files)
                entry.update(files=files, seed=outcome['seed'], seeds=outcome['seeds'],
                             parameters=outcome['parameters'])
            else:
                entry['error'] = outcome['error']
            if item.input is not None:
                entry['input'] = item.input
            else:
                entry['raw'] = item.raw
            entry['time'] = now()
            if 'seconds' in outcome:
                entry['seconds'] = outcome['seconds']
            manifest.append(entry)
            result.recorded += 1
            done = result.recorded + result.skipped
            if entry['status'] == 'ok':
                log(f"[{done}/{len(items)}] {item.id}: {', '.join(entry['files'])} (seed {entry['seed']})")
            else:
                log(f"[{done}/{len(items)}] {item.id} (line {item.line}): {entry['status']}: {entry['error']}")
            if on_record is not None:
                on_record(entry)

        try:
            for item in todo:
                if item.error is not None:
                    record(item, {'status': 'invalid', 'error': item.error}, [])
            if pending:
                if ray_address is None:
                    results = _run_local(pending, source, pipe)
                else:
                    results = run_ray(pending, source.with_absolute_paths(), ray_address, workers,
                                       gpus_per_worker, cpus_per_worker, dict(ray_init_kwargs or {}), log)
                with contextlib.closing(results):
                    for key, outcome, images in results:
                        record(by_id[key], outcome, images)
            manifest.rewrite(items)
        finally:
            manifest.close()
    for item in items:
        status = manifest.records[item.id]['status']
        setattr(result, status, getattr(result, status) + 1)
    log(f'{result.ok} made, {result.invalid} invalid, {result.failed} failed of {len(items)} item(s) '
        f'({result.recorded} recorded in this run); manifest: {manifest.path}')
    return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('prompts', help='JSONL file: one JSON object per line with the fields of a pipeline '
                        'input ({"text": ..., "seed": ..., ...}) and an optional "id"')
    parser.add_argument('--out', required=True, help='output folder for the PNG files and manifest.jsonl')
    add_model_arguments(parser)
    parser.add_argument('--ray', dest='ray_address', metavar='local|auto|ADDRESS', default=None,
                        help="run on Ray: 'local' starts Ray on this machine for this run, 'auto' joins the "
                        "cluster this machine is part of, or a cluster address (HOST:6379, ray://HOST:10001). "
                        f'Needs: {RAY_EXTRA_HINT}')
    parser.add_argument('--workers', type=int, default=None,
                        help='Ray workers, each loading one pipeline (default: one per GPU, or 1)')
    parser.add_argument('--gpus-per-worker', type=float, default=None,
                        help='GPUs per Ray worker (default: 1 when the cluster has GPUs, else 0)')
    parser.add_argument('--cpus-per-worker', type=float, default=1.0, help='CPUs per Ray worker (default: 1)')
    parser.add_argument('--retry-invalid', action='store_true',
                        help='run lines the manifest records as invalid again (failed ones always are)')
    parser.add_argument('--quiet', action='store_true',
                        help='nothing on stderr but errors: no progress lines (the manifest records every item)')


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to the CLI's subparsers; run it with :func:`batch_command`."""
    parser = subparsers.add_parser(
        'batch', help='make images for every line of a JSONL file (resumable; optionally on Ray)',
        description='Make images for every line of a JSONL file into PNG files and a manifest. Rerunning the '
        'same command resumes: what the manifest records as made is skipped. See docs/batch.md.')
    _add_arguments(parser)
    return parser


def batch_command(args: argparse.Namespace) -> int:
    """Run parsed ``batch`` arguments: 0 when every item is made, 1 when some are recorded as invalid
    or failed; an error of the batch as a whole (exit 2) is raised for the CLI to report."""
    source = ModelSource.from_args(args)
    quiet = getattr(args, 'quiet', False)
    if args.ray_address is None:
        use_cli_threads()
    with quiet_libraries(enabled=quiet and not verbose(args)), silent_stderr(quiet and not verbose(args)):
        result = run_batch(args.prompts, args.out, **dataclasses.asdict(source), ray_address=args.ray_address,
                           workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                           cpus_per_worker=args.cpus_per_worker, retry_invalid=args.retry_invalid,
                           log=(lambda message: None) if quiet else None)
    return 0 if result.complete else 1
