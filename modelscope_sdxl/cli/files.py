"""Files that are either whole or absent: atomic writes, fsync, the usual file mode, and locks.

PNG files, the batch manifest and the built-in models' cache all write through here, so a killed
process never leaves a half-written file under a final name, and two processes never build or
write the same thing at once.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Callable, Iterator, Optional

#: Prefix of a write in progress; such files are left only by a killed process.
TMP_PREFIX = '.tmp-'


def fsync_path(path: str) -> None:
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


def file_mode() -> int:
    """The mode a new file gets from open() under the current umask (mkstemp makes private 0600 files)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` into a temporary file beside it, fsync, then rename over it,
    so readers see the old file or the new one, never part of one. The file gets the usual mode and
    the folder entry is made durable."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(folder)


def remove_temporary_files(folder: str, suffixes: tuple = ('.png', '.jsonl')) -> list:
    """Delete what killed writers left half-written in `folder`; returns the names removed."""
    removed = []
    for entry in os.listdir(folder):
        if entry.startswith(TMP_PREFIX) and entry.endswith(suffixes):
            path = os.path.join(folder, entry)
            if os.path.isfile(path):
                os.unlink(path)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def flock(path: str, busy: Optional[BaseException] = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (a folder, or a file created if missing). With `busy`, do not
    wait for another holder: raise `busy` instead."""
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
            raise busy from None
        yield
    finally:
        os.close(fd)
