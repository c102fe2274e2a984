"""Environments for commands the tests run as subprocesses (``modelscope-sdxl``, ``modelscope``).

:func:`command_env` returns os.environ for a child process that
- talks to the stand-in hub (``MODELSCOPE_ENDPOINT``) and caches under a temporary folder, with the
  hub client's other settings (token, domain, regions) removed, as hub_fixtures does in-process;
- cannot resolve any host name but the loopback ones: a ``sitecustomize`` module on PYTHONPATH
  replaces ``socket.getaddrinfo`` in the child and writes every other name it was asked for to a
  file, which :func:`foreign_hosts` reads so the test can fail on it;
- runs torch on one thread, like the in-process tests (conftest.py), so images compare exactly.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Dict, List, Optional

from hub_fixtures import _UNSET

_GUARD = '''\
import os
import socket

_real_getaddrinfo = socket.getaddrinfo
_LOOPBACK = frozenset({'127.0.0.1', 'localhost', '::1'})


def _loopback_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name not in _LOOPBACK:
        with open(os.environ['SDXL_TEST_FOREIGN_HOSTS'], 'a', encoding='utf-8') as log:
            log.write(name + '\\n')
        raise socket.gaierror(socket.EAI_NONAME, 'tests allow loopback only, not %r' % name)
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
'''


def command_env(folder: str, endpoint: Optional[str] = None, **extra: str) -> Dict[str, str]:
    """Environment for a child process; its hub cache, guard and logs live under `folder`."""
    os.makedirs(folder, exist_ok=True)
    guard_dir = os.path.join(folder, 'loopback-guard')
    os.makedirs(guard_dir, exist_ok=True)
    with open(os.path.join(guard_dir, 'sitecustomize.py'), 'w', encoding='utf-8') as f:
        f.write(_GUARD)
    env = dict(os.environ)
    for name in _UNSET:
        env.pop(name, None)
    env.update({
        'PYTHONPATH': os.pathsep.join([guard_dir] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])),
        'SDXL_TEST_FOREIGN_HOSTS': os.path.join(folder, 'foreign-hosts.txt'),
        'MODELSCOPE_CACHE': os.path.join(folder, 'modelscope-cache'),
        'MODELSCOPE_HOME': os.path.join(folder, 'modelscope-home'),
        # No host name can be resolved anyway; this keeps a proxy setting from being tried.
        'NO_PROXY': '127.0.0.1,localhost', 'no_proxy': '127.0.0.1,localhost',
        'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
        'PYTHONUNBUFFERED': '1', 'COLUMNS': '120',
    })
    if endpoint is not None:
        env['MODELSCOPE_ENDPOINT'] = endpoint
    else:  # nothing listens on port 9 of the loopback interface
        env['MODELSCOPE_ENDPOINT'] = 'http://127.0.0.1:9'
    env.update(extra)
    return env


def foreign_hosts(env: Dict[str, str]) -> List[str]:
    """Host names other than the loopback ones that a child with `env` tried to resolve."""
    path = env['SDXL_TEST_FOREIGN_HOSTS']
    if not os.path.exists(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def console_script(name: str) -> List[str]:
    """argv prefix that runs the console script `name` of this environment."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{name} is not installed next to {sys.executable}; run pip install -e .')
    return [sys.executable, path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def stop_process(process: 'subprocess.Popen') -> None:
    """End a server a test started: SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
