"""A stand-in ModelScope hub on 127.0.0.1 that serves model repos from local folders.

It answers the part of the hub HTTP API that ModelScope's client (modelscope 1.40 /
modelscope-hub 0.5) uses to resolve and download models:

- ``GET /openapi/v1/models/{owner}/{name}``: model info (``HubApi().get_model``, used by
  ``pipeline()`` to tell a hub id from a local path and to look up trusted owners);
- ``GET /api/v1/models/{owner}/{name}``: legacy model info (the fallback of the above, and
  what ``snapshot_download`` asks when a listing of a sub-folder is empty);
- ``GET /api/v1/models/{owner}/{name}/revisions``: branches and tags;
- ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=&Root=``: file listing
  with ``Size`` and ``Sha256``, which the client checks every download against;
- ``GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=``: one file's bytes
  (``model_file_download``, ``snapshot_download``), with ``Range`` support;
- ``GET /api/v1/repos/internalAccelerationInfo``: the client's cloud-region probe, answered
  with 404 (no acceleration), which the client treats as "none".

Every request is recorded (``requests``), so tests can tell exactly what the client fetched.
Errors carry neutral messages that do not repeat the repo id or revision: whatever names
them in an exception comes from the client or the package under test.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class StubRepo:
    """One model repo: revision name -> folder on disk; `tags` are tags, the rest branches."""
    revisions: Dict[str, str]
    tags: Tuple[str, ...] = ()
    created: int = 1_700_000_000  # CreatedAt of the first revision (seconds)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Dict[str, str]
    status: int


@dataclass(frozen=True)
class _Entry:
    path: str
    full: str
    size: int
    sha256: str


def _list_folder(folder: str) -> List[_Entry]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for name in sorted(filenames):
            if name.startswith('.'):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder).replace(os.sep, '/')
            digest = hashlib.sha256()
            with open(full, 'rb') as f:
                for block in iter(lambda: f.read(1 << 20), b''):
                    digest.update(block)
            entries.append(_Entry(rel, full, os.path.getsize(full), digest.hexdigest()))
    return entries


_REPO_PATH = re.compile(r'^/api/v1/models/([^/]+)/([^/]+)(/revisions|/repo/files|/repo)?/?$')
_OPENAPI_PATH = re.compile(r'^/openapi/v1/models/([^/]+)/([^/]+)/?$')
_UNHANDLED = -404  # status recorded for a request the stub does not implement (it answers 404)


class HubStub:
    """Serve `repos` (hub id -> StubRepo) on 127.0.0.1; `start()`/`stop()` may be repeated on one port."""

    def __init__(self, repos: Dict[str, StubRepo]):
        self.repos = repos
        self._listings: Dict[Tuple[str, str], List[_Entry]] = {}
        for repo_id, repo in repos.items():
            for revision, folder in repo.revisions.items():
                self._listings[(repo_id, revision)] = _list_folder(folder)
        self.requests: List[Request] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    def start(self) -> 'HubStub':
        if self._server is not None:
            return self
        stub = self

        class Handler(_Handler):
            hub = stub

        server = ThreadingHTTPServer(('127.0.0.1', self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='hub-stub', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> 'HubStub':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request log -------------------------------------------------------
    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def downloads(self, repo_id: Optional[str] = None) -> List[Tuple[str, str, str]]:
        """(repo id, revision, file path) of every successful file download (GET), in order."""
        found = []
        with self._lock:
            requests = list(self.requests)
        for r in requests:
            m = _REPO_PATH.match(r.path)
            if r.method == 'GET' and r.status in (200, 206) and m and m.group(3) == '/repo':
                rid = f'{m.group(1)}/{m.group(2)}'
                if repo_id is None or rid == repo_id:
                    found.append((rid, r.query.get('Revision', ''), r.query.get('FilePath', '')))
        return found

    def unhandled(self) -> List[Request]:
        """Requests this stub does not implement (answered 404 with a note)."""
        with self._lock:
            return [r for r in self.requests if r.status == _UNHANDLED]

    # -- data --------------------------------------------------------------
    def listing(self, repo_id: str, revision: str) -> Optional[List[_Entry]]:
        return self._listings.get((repo_id, revision))


@dataclass
class _Response:
    status: int
    body: bytes = b''
    headers: Dict[str, str] = field(default_factory=dict)


def _json(status: int, payload: dict) -> _Response:
    return _Response(status, json.dumps(payload).encode('utf-8'), {'Content-Type': 'application/json'})


def _legacy_ok(data) -> _Response:
    return _json(200, {'Code': 200, 'Success': True, 'Message': 'success', 'Data': data})


def _legacy_error(status: int, message: str) -> _Response:
    return _json(status, {'Code': status, 'Success': False, 'Message': message})


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        response, handled = self._route(path, query)
        # Recorded before the response goes out, so the log is complete once the client has it.
        self.hub._record(Request(self.command, path, query, response.status if handled else _UNHANDLED))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(response.body)))
        self.end_headers()
        if self.command != 'HEAD':
            try:
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    do_GET = _handle
    do_HEAD = _handle

    def _route(self, path: str, query: Dict[str, str]) -> Tuple[_Response, bool]:
        m = _OPENAPI_PATH.match(path)
        if m:
            repo_id = f'{m.group(1)}/{m.group(2)}'
            if repo_id not in self.hub.repos:
                return _json(404, {'success': False, 'code': 'ResourceNotFound', 'message': 'Resource not found'}), True
            return _json(200, {'success': True, 'data': self._info(repo_id, openapi=True)}), True
        m = _REPO_PATH.match(path)
        if m:
            repo_id, action = f'{m.group(1)}/{m.group(2)}', m.group(3)
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                return _legacy_error(404, '模型不存在'), True  # the hub's "model does not exist"
            if action is None:
                return _legacy_ok(self._info(repo_id, openapi=False)), True
            if action == '/revisions':
                return _legacy_ok({'RevisionMap': self._revisions(repo)}), True
            revision = query.get('Revision') or 'master'
            entries = self.hub.listing(repo_id, revision)
            if entries is None:
                return _legacy_error(404, 'Revision not found'), True
            if action == '/repo/files':
                return self._files(entries, query), True
            return self._file(entries, query.get('FilePath', '')), True
        if path == '/api/v1/repos/internalAccelerationInfo':
            return _legacy_error(404, 'Not Found'), True
        return _legacy_error(404, f'not implemented by the hub stub: {self.command} {path}'), False

    @staticmethod
    def _info(repo_id: str, openapi: bool) -> dict:
        owner, name = repo_id.split('/', 1)
        if openapi:
            return {'id': repo_id, 'owner': owner, 'name': name, 'private': False, 'gated': False,
                    'downloads': 0, 'likes': 0, 'license': 'Apache License 2.0'}
        return {'Id': 1, 'Path': owner, 'Name': name, 'Owner': owner, 'Visibility': 5,
                'License': 'Apache License 2.0', 'Downloads': 0}

    @staticmethod
    def _revisions(repo: StubRepo) -> dict:
        def item(i: int, name: str) -> dict:
            return {'Revision': name, 'CreatedAt': repo.created + i, 'CommitId': f'{i:040x}'}
        names = list(repo.revisions)
        return {'Branches': [item(i, n) for i, n in enumerate(names) if n not in repo.tags],
                'Tags': [item(i, n) for i, n in enumerate(names) if n in repo.tags]}

    @staticmethod
    def _files(entries: List[_Entry], query: Dict[str, str]) -> _Response:
        root = (query.get('Root') or '').strip('/')
        recursive = query.get('Recursive', 'True').lower() == 'true'
        files, dirs = [], set()
        for e in entries:
            if root and not e.path.startswith(root + '/'):
                continue
            rest = e.path[len(root) + 1:] if root else e.path
            parents = rest.split('/')[:-1]
            if not recursive and parents:
                dirs.add((root + '/' if root else '') + parents[0])
                continue
            for depth in range(1, len(parents) + 1):
                dirs.add((root + '/' if root else '') + '/'.join(parents[:depth]))
            files.append({'Name': e.path.rsplit('/', 1)[-1], 'Path': e.path, 'Type': 'blob', 'Size': e.size,
                          'Sha256': e.sha256, 'IsLFS': e.path.endswith(('.safetensors', '.bin')),
                          'CommittedDate': 1_700_000_000})
        trees = [{'Name': d.rsplit('/', 1)[-1], 'Path': d, 'Type': 'tree', 'Size': 0} for d in sorted(dirs)]
        if root and not files and not trees:
            return _legacy_error(404, 'Path not found')
        return _legacy_ok({'Files': trees + files})

    def _file(self, entries: List[_Entry], file_path: str) -> _Response:
        entry = next((e for e in entries if e.path == file_path), None)
        if entry is None:
            return _legacy_error(404, 'File not found')
        with open(entry.full, 'rb') as f:
            data = f.read()
        octets = {'Content-Type': 'application/octet-stream'}
        match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range', '') or '')
        if not match:
            return _Response(200, data, octets)
        start = int(match.group(1))
        if start >= len(data):
            return _Response(416, b'', {'Content-Range': f'bytes */{len(data)}'})
        return _Response(206, data[start:], {**octets, 'Content-Range': f'bytes {start}-{len(data) - 1}/{len(data)}'})


def wait_until_closed(port: int, timeout: float = 5.0) -> None:
    """Block until nothing accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(('127.0.0.1', port)) != 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f'port {port} still accepts connections')


# Files real SDXL repos carry that the pipeline must never fetch: pickle weights, fp16
# variants and the single-file checkpoints at the repo root. Their bytes are not loadable,
# so a pipeline that read one would fail.
BASE_DECOYS = ('unet/diffusion_pytorch_model.bin', 'unet/diffusion_pytorch_model.fp16.safetensors',
               'text_encoder/pytorch_model.bin', 'vae/diffusion_pytorch_model.fp16.safetensors',
               'sd_xl_base_1.0.safetensors')
REFINER_DECOYS = ('unet/diffusion_pytorch_model.bin', 'unet/diffusion_pytorch_model.fp16.safetensors',
                  'sd_xl_refiner_1.0.safetensors')
BASE_ID = 'test-owner/sdxl-tiny-base'
REFINER_ID = 'test-owner/sdxl-tiny-refiner'
TAGS = ('v1.0.0', 'v2.0.0')


def build_hub_repos(root: str) -> Dict[str, Any]:
    """Build the tiny base + refiner at two revisions under `root` and return
    {'repos': {hub id: StubRepo}, 'local': {tag: (base folder, refiner folder)}}.

    Revision v1.0.0 has seed-0 weights, v2.0.0 seed-1 weights; each base's configuration.json
    names the refiner by hub id at its own tag. `master` is a branch at v2.0.0's content.
    """
    from modelscope_sdxl.mini.sdxl_folders import build_sdxl_pair

    local = {}
    for seed, tag in enumerate(TAGS):
        base, refiner = build_sdxl_pair(os.path.join(root, tag), seed=seed, refiner_ref=REFINER_ID,
                                        refiner_revision=tag)
        for folder, decoys, title in ((base, BASE_DECOYS, 'base'), (refiner, REFINER_DECOYS, 'refiner')):
            for rel in decoys:
                path = os.path.join(folder, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as f:
                    f.write(b'not a loadable checkpoint: ' + rel.encode() + b'\0' * 1024)
            with open(os.path.join(folder, 'README.md'), 'w', encoding='utf-8') as f:
                f.write(f'# tiny SDXL {title} {tag}\n')
        local[tag] = (base, refiner)
    repos = {
        BASE_ID: StubRepo({tag: local[tag][0] for tag in TAGS} | {'master': local[TAGS[-1]][0]}, tags=TAGS),
        REFINER_ID: StubRepo({tag: local[tag][1] for tag in TAGS} | {'master': local[TAGS[-1]][1]}, tags=TAGS),
    }
    return {'repos': repos, 'local': local}
