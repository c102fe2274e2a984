"""``modelscope-sdxl batch --ray``: the batch's items made by a Ray Data actor pool.

Each of ``--workers`` actors loads one pipeline and turns inputs into images; the images stream
back to the calling process, which alone writes the files and the manifest. Ray is optional
(``pip install 'modelscope-sdxl[ray]'``) and imported only when ``--ray`` is given.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from .batch_items import Item, generate_item
from .errors import BatchError
from .sources import ModelSource

if TYPE_CHECKING:
    import numpy as np

RAY_EXTRA_HINT = "pip install 'modelscope-sdxl[ray]'"
#: What a run yields per item: (id, outcome, BGR images).
Results = Iterator[Tuple[str, Dict[str, Any], List['np.ndarray']]]


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


class RayWorker:
    """A Ray Data actor: loads one pipeline, then turns batches of {'key', 'request'} into results."""

    def __init__(self, source: ModelSource):
        self.pipe = source.build_pipeline()

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


def no_cluster_message(address: str, exc: BaseException) -> str:
    """Ray's 'no running instance' error in this command's words (Ray's speaks of its own --address)."""
    where = 'no Ray cluster is running on this machine' if address == 'auto' else \
        f'cannot reach the Ray cluster at {address!r}'
    return (f'--ray {address}: {where} ({str(exc).splitlines()[0].split(". ")[0]}); start one with '
            "'ray start --head', give its address with --ray HOST:6379, or use --ray local to start Ray for "
            'this run only')


def run_ray(pending: List[Item], source: ModelSource, address: str, workers: Optional[int],
             gpus_per_worker: Optional[float], cpus_per_worker: float, init_kwargs: Dict[str, Any],
             log: Callable[[str], None]) -> Results:
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {'include_dashboard': False, **init_kwargs}
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise BatchError(no_cluster_message(address, exc)) from exc
        started = True
    try:
        resources = ray.cluster_resources()
        cluster_gpus = resources.get('GPU', 0)
        gpus = gpus_per_worker if gpus_per_worker is not None else (1 if cluster_gpus >= 1 else 0)
        if workers is None:
            workers = max(1, int(cluster_gpus // gpus)) if gpus else 1
        workers = min(workers, len(pending))
        if source.device is None:
            source = dataclasses.replace(source, device='gpu' if gpus else 'cpu')
        log(f'ray: {workers} worker(s), each {cpus_per_worker:g} CPU and {gpus:g} GPU, device {source.device}; '
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
        dataset = dataset.map_batches(RayWorker, fn_constructor_args=(source,), batch_size=1,
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
