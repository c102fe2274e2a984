"""Fixtures that point ModelScope's hub client at the stand-in hub of hub_stub.py.

A test module uses them by importing them: ``from hub_fixtures import hub, hub_repos, hub_server``.

- ``hub_repos`` (session): the tiny base + refiner at v1.0.0 and v2.0.0, built once.
- ``hub_server`` (session): the stand-in hub serving them on 127.0.0.1.
- ``hub`` (function): the client pointed at that server with an empty cache under the test's
  tmp_path (a :class:`HubEnvironment`).

While a :func:`hub_environment` is active, resolving any host name other than the loopback
ones fails and is recorded; leaving the environment then fails the test. So nothing the
client, ModelScope or diffusers does can reach a real host unnoticed.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Iterator, List

import pytest

from hub_stub import HubStub, build_hub_repos

# Read by ModelScope's hub client: endpoint, cache root, config/credentials folder, token,
# and settings that would change where or how it downloads.
_SET = ('MODELSCOPE_ENDPOINT', 'MODELSCOPE_CACHE', 'MODELSCOPE_HOME')
_UNSET = ('MODELSCOPE_API_TOKEN', 'MODELSCOPE_DOMAIN', 'MODELSCOPE_PREFER_AI_SITE', 'MS_CACHE_HOME',
          'MODELSCOPE_CREDENTIALS_PATH', 'MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS',
          'INTER_CLOUD_ACCELERATION_REGIONS', 'MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION',
          'INTRA_CLOUD_ACCELERATION_REGION')
_LOOPBACK = frozenset({'127.0.0.1', 'localhost', '::1'})


@dataclass
class HubEnvironment:
    stub: HubStub
    cache: str
    #: host names something tried to resolve that are not loopback (must stay empty)
    foreign_hosts: List[str]

    def snapshot(self, repo_id: str, revision: str) -> str:
        """Where ModelScope's client puts `repo_id` at `revision` in this cache."""
        return os.path.join(self.cache, 'models', repo_id.replace('/', '--'), 'snapshots', revision)


def _reset_client_config() -> None:
    # The client builds its configuration (endpoint, cache root, token) once per process,
    # lazily; drop it so the next call reads the environment set here.
    from modelscope_hub.config import set_default_config

    set_default_config(None)


@contextlib.contextmanager
def hub_environment(stub: HubStub, cache: str) -> Iterator[HubEnvironment]:
    """ModelScope's client talks to `stub` and caches under `cache`; other hosts are refused."""
    os.makedirs(cache, exist_ok=True)
    env = HubEnvironment(stub=stub, cache=cache, foreign_hosts=[])
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in _LOOPBACK:
            env.foreign_hosts.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f'tests allow loopback only, not {name!r}')
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MODELSCOPE_ENDPOINT', stub.endpoint)
        mp.setenv('MODELSCOPE_CACHE', cache)
        mp.setenv('MODELSCOPE_HOME', os.path.join(cache, '.modelscope-home'))
        for name in _UNSET:
            mp.delenv(name, raising=False)
        mp.setattr(socket, 'getaddrinfo', loopback_only)
        _reset_client_config()
        stub.clear_log()
        try:
            yield env
        finally:
            _reset_client_config()
    assert not env.foreign_hosts, f'tried to reach hosts other than the stand-in hub: {env.foreign_hosts}'
    assert not stub.unhandled(), f'requests the stand-in hub does not implement: {stub.unhandled()}'


@pytest.fixture(scope='session')
def hub_repos(tmp_path_factory):
    """{'repos': {hub id: StubRepo}, 'local': {tag: (base folder, refiner folder)}}, built once."""
    return build_hub_repos(str(tmp_path_factory.mktemp('hub-repos')))


@pytest.fixture(scope='session')
def hub_server(hub_repos):
    """The stand-in hub on 127.0.0.1 serving test-owner/sdxl-tiny-base and test-owner/sdxl-tiny-refiner."""
    stub = HubStub(hub_repos['repos']).start()
    yield stub
    stub.stop()


@pytest.fixture
def hub(hub_server, tmp_path):
    """The hub client pointed at the running stand-in hub, with an empty cache in tmp_path."""
    hub_server.start()  # a test may have stopped it
    with hub_environment(hub_server, str(tmp_path / 'modelscope-cache')) as env:
        yield env
