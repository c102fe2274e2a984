"""How the command line fails: errors of the command as given (exit 2) and everything else (exit 1)."""
from __future__ import annotations

from typing import Optional


class CommandError(Exception):
    """A command line that cannot run as given (exit code 2)."""


class BatchError(CommandError):
    """The batch as a whole cannot run (as opposed to one line failing, which is recorded)."""


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status of a hub client error (requests' HTTPError carries the response), else None."""
    status = getattr(getattr(exc, 'response', None), 'status_code', None)
    return status if isinstance(status, int) else None


def exit_code(exc: BaseException) -> int:
    """2 for a command line that cannot run as given (bad value, missing file, repo or revision), 1 otherwise."""
    if isinstance(exc, (CommandError, ValueError, TypeError, LookupError, FileNotFoundError,
                        NotADirectoryError, IsADirectoryError)) or http_status(exc) == 404:
        return 2
    try:
        from modelscope_hub.errors import NotExistError
    except ImportError:  # pragma: no cover - modelscope_hub is a dependency of modelscope
        return 1
    return 2 if isinstance(exc, NotExistError) else 1


def one_line(exc: BaseException) -> str:
    """The message a command prints for `exc`: one line (a hub client error's first line says what
    failed; the rest is the raw request and response), with the exception's type where it is not
    an error of the command line."""
    status = http_status(exc)
    message = ' '.join(str(exc).splitlines()[:1]) if status else (' '.join(str(exc).split()) or type(exc).__name__)
    known = exit_code(exc) == 2 or isinstance(exc, OSError)
    return message if known else f'{type(exc).__name__}: {message}'
