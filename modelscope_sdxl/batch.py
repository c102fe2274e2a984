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
import codecs
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .builtin_models import (BUILTIN_HELP, BUILTIN_MODELS, DEFAULT_MODEL, builtin_model_folder, model_record,
                             source_record)

if TYPE_CHECKING:
    import numpy as np

# Only the standard library at import time: the CLI builds its parser, this one included, on every call.

MANIFEST = 'manifest.jsonl'
# Temporary files of an unfinished write: save_png's '.tmp-*.png' and the manifest's '.tmp-*.jsonl'.
TMP_PREFIX = '.tmp-'
MAX_ID_LENGTH = 200
# An id used as it is in file names; other ids are turned into '<slug>-<hash>'.
_SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z')
RAY_EXTRA_HINT = "pip install 'modelscope-sdxl[ray]'"


class BatchError(RuntimeError):
    """The batch as a whole cannot run (as opposed to one line failing, which is recorded)."""


# ----------------------------------------------------------------------------------------------
# The input file


@dataclasses.dataclass
class Item:
    """One non-blank line of the input file."""
    id: str
    line: int
    name: Optional[str] = None  # stem of the item's file names: DIR/<name>-1.png, ...
    input: Optional[Dict[str, Any]] = None  # the line's object without 'id': the pipeline input
    raw: Optional[str] = None  # the line's text, when it is not a JSON object
    error: Optional[str] = None  # why the line cannot be made, found while reading it


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not a JSON value')


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _file_name(item_id: str) -> str:
    if _SAFE_NAME.match(item_id):
        return item_id
    slug = re.sub(r'[^A-Za-z0-9._-]+', '_', item_id).strip('._-')[:60] or 'item'
    return f'{slug}-{_content_hash(item_id.encode("utf-8"))[:8]}'


def _check_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'id must be a string or an integer, got {type(value).__name__} {value!r}')
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f'id must be 1 to {MAX_ID_LENGTH} characters without control characters, got {text!r}')
    return text


def read_items(path: str) -> List[Item]:
    """Parse the input file: one item per non-blank line, each with an id, in file order.

    The id is the line's ``id`` (a string, or an integer turned into one). A line without an id gets
    one from its content: the first 16 hex digits of the SHA-256 of its object as canonical JSON
    (sorted keys, no spaces), so it survives reordering, inserting and deleting other lines, and
    changes when the line changes; the 2nd, 3rd, ... identical line gets '-2', '-3', ... added.
    A line that is not a JSON object is identified by the hash of its bytes the same way.
    """
    with open(path, 'rb') as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    items: List[Item] = []
    used: Dict[str, int] = {}  # id -> line
    names: Dict[str, str] = {}  # file name, lower-cased (case-insensitive file systems) -> id
    repeats: Dict[str, int] = {}  # content hash -> lines seen with it

    def derived_id(content: bytes) -> str:
        digest = _content_hash(content)
        while True:
            repeats[digest] = repeats.get(digest, 0) + 1
            candidate = digest if repeats[digest] == 1 else f'{digest}-{repeats[digest]}'
            if candidate not in used:
                return candidate

    for number, raw in enumerate(data.split(b'\n'), 1):
        raw = raw.rstrip(b'\r')
        if not raw.strip():
            continue
        obj: Any = None
        error: Optional[str] = None
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError as exc:
            text, error = raw.decode('utf-8', 'replace'), f'line is not UTF-8: {exc}'
        if error is None:
            try:
                obj = json.loads(text, parse_constant=_reject_constant)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                error = f'invalid JSON: {exc}'
            else:
                if not isinstance(obj, dict):
                    error = (f'a line must be a JSON object such as {{"text": "a dog"}}, '
                             f'got {type(obj).__name__}')
        if error is not None:
            item_id = derived_id(raw)
            used[item_id] = number
            items.append(Item(item_id, number, raw=text, error=error))
            continue
        inputs = {k: v for k, v in obj.items() if k != 'id'}
        item_id = None
        if 'id' in obj:
            try:
                item_id = _check_id(obj['id'])
                if item_id in used:
                    raise ValueError(f'id {item_id!r} is already used on line {used[item_id]}')
                name = _file_name(item_id)
                if name.lower() in names:
                    other = names[name.lower()]
                    raise ValueError(f'id {item_id!r} would name its files like id {other!r} '
                                     f'(line {used[other]}) does; file names ignore case')
            except ValueError as exc:
                error, item_id = str(exc), None
        if item_id is None:
            canonical = json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
            item_id = derived_id(canonical.encode('utf-8'))
        used[item_id] = number
        item = Item(item_id, number, input=inputs, error=error)
        if error is None:
            item.name = _file_name(item_id)
            names[item.name.lower()] = item_id
        items.append(item)
    return items


# ----------------------------------------------------------------------------------------------
# The output folder: manifest, files, lock


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def _fsync_path(path: str) -> None:
    """Make a file's content, or a folder's entries, durable (best effort where not supported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode a new file gets from open() (mkstemp makes private 0600 files)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _json_line(record: Dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + '\n').encode('utf-8')


class Manifest:
    """DIR/manifest.jsonl: one JSON record per line; the latest record of an id is the one that counts."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, MANIFEST)
        self.records: Dict[str, Dict[str, Any]] = {}
        self._fd: Optional[int] = None

    def load(self) -> None:
        """Read the records, dropping a last line torn by a killed run."""
        self.records = {}
        if not os.path.exists(self.path):
            return
        with open(self.path, 'rb') as f:
            lines = f.read().split(b'\n')
        # The text after the last newline is a torn write (or empty); so is an unreadable last line.
        lines = [line for line in lines[:-1] if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line.decode('utf-8'))
                if not isinstance(record, dict) or not isinstance(record.get('id'), str):
                    raise ValueError('not a record with an id')
            except ValueError as exc:
                if number == len(lines):
                    break
                raise BatchError(f'{self.path} line {number} is not a manifest record ({exc}); '
                                 'fix or remove that line') from exc
            self.records.pop(record['id'], None)
            self.records[record['id']] = record

    def files_present(self, record: Dict[str, Any]) -> bool:
        files = record.get('files')
        return bool(files) and all(
            isinstance(f, str) and os.path.isfile(os.path.join(self.out_dir, f))
            and os.path.getsize(os.path.join(self.out_dir, f)) > 0 for f in files)

    def is_done(self, item: Item, retry_invalid: bool = False) -> bool:
        """Whether the item's record stands for this line as it is now: made, with its files on disk,
        or refused as invalid (the same line is refused the same way again)."""
        record = self.records.get(item.id)
        if record is None or record.get('input') != item.input or record.get('raw') != item.raw:
            return False
        if record.get('status') == 'ok':
            return self.files_present(record)
        return record.get('status') == 'invalid' and not retry_invalid

    def rewrite(self, items: Sequence[Item]) -> None:
        """Atomically replace the file with one record per id: the input's items in file order, then
        records of ids no longer in the input whose images are still in the folder."""
        self.close()
        current = {item.id for item in items}
        ordered = [self.records[item.id] for item in items if item.id in self.records]
        ordered += [r for i, r in self.records.items()
                    if i not in current and r.get('status') == 'ok' and self.files_present(r)]
        self.records = {r['id']: r for r in ordered}
        fd, tmp = _mkstemp(self.out_dir, '.jsonl')
        try:
            os.fchmod(fd, _file_mode())
            with os.fdopen(fd, 'wb') as f:
                f.writelines(_json_line(r) for r in ordered)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_path(self.out_dir)

    def append(self, record: Dict[str, Any]) -> None:
        """Append one whole line and make it durable before going on."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        data = _json_line(record)
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)
        self.records.pop(record['id'], None)
        self.records[record['id']] = record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _mkstemp(folder: str, suffix: str) -> Tuple[int, str]:
    import tempfile
    return tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)


def remove_temporary_files(out_dir: str) -> List[str]:
    """Delete what killed runs left half-written (save_png's and the manifest's temporary files)."""
    removed = []
    for entry in os.listdir(out_dir):
        if entry.startswith(TMP_PREFIX) and entry.endswith(('.png', '.jsonl')):
            path = os.path.join(out_dir, entry)
            if os.path.isfile(path):
                os.unlink(path)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _flock(path: str, busy: Optional[str] = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a folder, or a file created if missing). With `busy`, do not
    wait for another holder: raise BatchError(busy) instead."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: runs must not overlap
        yield
        return
    fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise BatchError(busy) from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Generation: the same code on this machine and on Ray workers


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What a worker loads: the same options as ``modelscope-sdxl generate``."""
    model: str = DEFAULT_MODEL  # a built-in model ('mini', 'tiny'), a hub id or a local folder
    revision: Optional[str] = None
    refiner: Optional[str] = None  # None: configuration.json's; 'none': the base alone
    refiner_revision: Optional[str] = None
    device: Optional[str] = None  # None: 'gpu' where there is one, else 'cpu'

    def with_absolute_paths(self) -> 'PipelineSpec':
        """Local folders as absolute paths, so workers started elsewhere find them."""
        return dataclasses.replace(self, model=model_record(self.model), refiner=model_record(self.refiner))

    def build(self) -> Any:
        import modelscope_sdxl  # noqa: F401  (registers the pipeline)
        from modelscope.pipelines import pipeline

        from .loading import BASE_FILES, resolve_folder
        from .names import PIPELINE_TYPE, TASK

        if self.model in BUILTIN_MODELS:
            model = builtin_model_folder(self.model)
        else:
            model = resolve_folder(self.model, self.revision, BASE_FILES)
        kwargs: Dict[str, Any] = {'device': self.device or _local_device(), 'progress_bar': False}
        if self.refiner is not None:
            kwargs['refiner'] = None if self.refiner.lower() == 'none' else self.refiner
        if self.refiner_revision is not None:
            kwargs['refiner_revision'] = self.refiner_revision
        return pipeline(task=TASK, model=model, pipeline_name=PIPELINE_TYPE, **kwargs)


def generate_item(pipe: Any, inputs: Dict[str, Any]) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """Run one input: ({'status': 'ok', 'seed', 'parameters', 'seconds'}, BGR images), or
    ({'status': 'invalid' | 'failed', 'error': 'ValueError: ...'}, []).

    The pipeline refuses bad inputs with ValueError or TypeError naming the parameter: 'invalid',
    which the same line would get again. Anything else ('failed', such as running out of memory)
    may not happen again, so a rerun retries it.
    """
    start = time.perf_counter()
    try:
        output = pipe(dict(inputs))
    except Exception as exc:  # recorded for this line; the other lines go on
        status = 'invalid' if isinstance(exc, (ValueError, TypeError)) else 'failed'
        return {'status': status, 'error': f'{type(exc).__name__}: {exc}'}, []
    return ({'status': 'ok', 'seed': output['seed'], 'parameters': output['parameters'],
             'seconds': round(time.perf_counter() - start, 3)}, list(output['output_imgs']))


def _pack(images: List[np.ndarray]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    if images:
        np.save(buffer, np.stack(images), allow_pickle=False)
    return buffer.getvalue()


def _unpack(data: bytes) -> List[np.ndarray]:
    import numpy as np

    if not data:
        return []
    return list(np.load(io.BytesIO(data), allow_pickle=False))


Results = Iterator[Tuple[str, Dict[str, Any], List['np.ndarray']]]


def _run_local(pending: List[Item], spec: PipelineSpec, pipe: Any) -> Results:
    if pipe is None:
        pipe = spec.build()
    for item in pending:
        result, images = generate_item(pipe, item.input)
        yield item.id, result, images


class RayWorker:
    """A Ray Data actor: loads one pipeline, then turns batches of {'key', 'request'} into results."""

    def __init__(self, spec: PipelineSpec):
        self.pipe = spec.build()

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import numpy as np

        keys, results, blobs = [], [], []
        for key, request in zip(batch['key'], batch['request']):
            result, images = generate_item(self.pipe, json.loads(str(request)))
            keys.append(str(key))
            results.append(json.dumps(result))
            blobs.append(_pack(images))
        return {'key': np.array(keys, dtype=object), 'result': np.array(results, dtype=object),
                'images': np.array(blobs, dtype=object)}


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise BatchError(f'--ray needs Ray, which is not installed here ({exc}); install it with: '
                         f'{RAY_EXTRA_HINT}') from exc
    return ray


def _run_ray(pending: List[Item], spec: PipelineSpec, address: str, workers: Optional[int],
             gpus_per_worker: Optional[float], cpus_per_worker: float, init_kwargs: Dict[str, Any],
             log: Callable[[str], None]) -> Results:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {'include_dashboard': False, **init_kwargs}
        ray.init(address=address, **kwargs)
        started = True
    try:
        resources = ray.cluster_resources()
        cluster_gpus = resources.get('GPU', 0)
        gpus = gpus_per_worker if gpus_per_worker is not None else (1 if cluster_gpus >= 1 else 0)
        if workers is None:
            workers = max(1, int(cluster_gpus // gpus)) if gpus else 1
        workers = min(workers, len(pending))
        if spec.device is None:
            spec = dataclasses.replace(spec, device='gpu' if gpus else 'cpu')
        log(f'ray: {workers} worker(s), each {cpus_per_worker:g} CPU and {gpus:g} GPU, device {spec.device}; '
            f"cluster has {resources.get('CPU', 0):g} CPU and {cluster_gpus:g} GPU")
        if workers * gpus > cluster_gpus or workers * cpus_per_worker > resources.get('CPU', 0):
            log('ray: the cluster has fewer resources than the workers ask for now; workers wait for more')
        ray.data.DataContext.get_current().enable_progress_bars = False
        # One row per block: every item is its own task, so each image streams back when made.
        dataset = ray.data.from_items([{'key': item.id, 'request': json.dumps(item.input)} for item in pending],
                                      override_num_blocks=len(pending))
        options: Dict[str, Any] = {'num_cpus': cpus_per_worker}
        if gpus:
            options['num_gpus'] = gpus
        dataset = dataset.map_batches(RayWorker, fn_constructor_args=(spec,), batch_size=1,
                                      compute=ray.data.ActorPoolStrategy(size=workers), **options)
        rows = iter(dataset.iter_rows())
        try:
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except ray.exceptions.RayError as exc:  # a worker could not start, or died
                    raise BatchError(f'the Ray job failed: {_root_error(exc)}; what was made is recorded, '
                                     'and rerunning the command resumes') from exc
                yield str(row['key']), json.loads(row['result']), _unpack(row['images'])
        finally:
            close = getattr(rows, 'close', None)
            if close is not None:
                close()  # stops the streaming execution and its actors
    finally:
        if started:
            ray.shutdown()


def _root_error(exc: BaseException) -> str:
    """The line naming the original error in a Ray error's text (which holds remote tracebacks)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if not line[0].isspace() and re.match(r'[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b', line):
            return line.strip()
    return f'{type(exc).__name__}: {lines[0] if lines else ""}'


# ----------------------------------------------------------------------------------------------
# The job


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


def run_batch(prompts: str, out_dir: str, *, model: str = DEFAULT_MODEL, revision: Optional[str] = None,
              refiner: Optional[str] = None, refiner_revision: Optional[str] = None,
              device: Optional[str] = None, ray_address: Optional[str] = None, workers: Optional[int] = None,
              gpus_per_worker: Optional[float] = None, cpus_per_worker: float = 1.0,
              ray_init_kwargs: Optional[Dict[str, Any]] = None, retry_invalid: bool = False, pipe: Any = None,
              on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
              log: Optional[Callable[[str], None]] = None) -> BatchResult:
    """Make every line of `prompts` into PNG files under `out_dir`, resuming what a manifest there says.

    Args:
        prompts: the JSONL input file.
        out_dir: where the PNG files and manifest.jsonl go (created if missing).
        model, revision, refiner, refiner_revision: as for ``modelscope-sdxl generate``.
        device: 'cpu', 'gpu', 'cuda:N'; default: 'gpu' when CUDA is available here (on Ray: when
            workers get GPUs), else 'cpu'.
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
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f'{name} must be a number >= 0, got {value!r}')
    if device is not None:
        from .loading import check_device
        check_device(device)

    if not os.path.isfile(prompts):
        raise FileNotFoundError(f'prompts file {prompts!r} does not exist')
    items = read_items(prompts)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest(out_dir)
    result = BatchResult(manifest=manifest.path, items=len(items))
    mode = _file_mode()
    with _flock(out_dir, busy=f'another batch run is writing to {out_dir}; wait for it to end'):
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
        source = source_record(model, revision, refiner, refiner_revision) if pipe is None else {}

        def record(item: Item, outcome: Dict[str, Any], images: List[np.ndarray]) -> None:
            from .png import save_png

            entry: Dict[str, Any] = {'id': item.id, 'line': item.line, 'status': outcome['status']}
            if outcome['status'] == 'ok':
                files = [f'{item.name}-{k}.png' for k in range(1, len(images) + 1)]
                for name, image in zip(files, images):
                    path = os.path.join(out_dir, name)
                    save_png(path, image, outcome['parameters'], source)
                    os.chmod(path, mode)
                    _fsync_path(path)
                _fsync_path(out_dir)
                _remove_stale_files(out_dir, manifest.records.get(item.id), files)
                entry.update(files=files, seed=outcome['seed'], parameters=outcome['parameters'])
            else:
                entry['error'] = outcome['error']
            if item.input is not None:
                entry['input'] = item.input
            else:
                entry['raw'] = item.raw
            entry['time'] = _now()
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
                spec = PipelineSpec(model, revision, refiner, refiner_revision, device)
                if ray_address is None:
                    results = _run_local(pending, spec, pipe)
                else:
                    results = _run_ray(pending, spec.with_absolute_paths(), ray_address, workers,
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


def _local_device() -> str:
    import torch
    return 'gpu' if torch.cuda.is_available() else 'cpu'


# ----------------------------------------------------------------------------------------------
# Command line


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('prompts', help='JSONL file: one JSON object per line with the fields of a pipeline '
                        'input ({"text": ..., "seed": ..., ...}) and an optional "id"')
    parser.add_argument('--out', required=True, help='output folder for the PNG files and manifest.jsonl')
    parser.add_argument('--model', default=DEFAULT_MODEL,
                        help=f'hub id or local folder of the base model, or a built-in model: {BUILTIN_HELP}')
    parser.add_argument('--revision', default=None, help='revision of a hub model')
    parser.add_argument('--refiner', default=None,
                        help="refiner hub id or folder (default: the model's configuration.json); 'none' for base only")
    parser.add_argument('--refiner-revision', default=None, help='revision of the refiner repo')
    parser.add_argument('--device', default=None,
                        help="'cpu', 'gpu' or 'cuda:N' (default: 'gpu' where there is one, else 'cpu')")
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
    or failed, 2 when the batch could not run."""
    try:
        result = run_batch(args.prompts, args.out, model=args.model, revision=args.revision,
                           refiner=args.refiner, refiner_revision=args.refiner_revision, device=args.device,
                           ray_address=args.ray_address, workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                           retry_invalid=args.retry_invalid)
    except (BatchError, ValueError, TypeError, OSError) as exc:
        print(f'modelscope-sdxl: error: {exc}', file=sys.stderr)
        return 2
    return 0 if result.complete else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m modelscope_sdxl.batch', description=__doc__.split('\n')[0])
    _add_arguments(parser)
    return batch_command(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
