"""Quiet libraries for a command line: ModelScope's, transformers' and diffusers' log lines and
loading bars are noise there (the pipeline's own progress bars stay)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from typing import Callable, Iterator, List

# Loggers whose INFO/WARNING lines are noise on a command line.
_NOISY_LOGGERS = ('modelscope', 'modelscope_hub')


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Hide ModelScope's, transformers' and diffusers' INFO/WARNING lines, Python warnings and the
    libraries' loading bars for the duration (the pipeline's own progress bars stay). Restores all."""
    if not enabled:
        yield
        return
    quiet = _BelowError()
    try:  # the hub client sets its logger's level when first used: have it do so now
        from modelscope_hub.utils.logger import get_logger

        get_logger()
    except ImportError:  # pragma: no cover - modelscope_hub is a dependency of modelscope
        pass
    saved_levels = []
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        # ModelScope resets its logger's level on every get_logger() call, so a filter does the work;
        # the level covers child loggers.
        logger.addFilter(quiet)
        saved_levels.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    restore: List[Callable[[], None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            for module_name in ('transformers.utils.logging', 'diffusers.utils.logging'):
                restore.append(_quiet_hf_logging(module_name))
            yield
        finally:
            for undo in reversed(restore):
                undo()
            for logger, level in saved_levels:
                logger.removeFilter(quiet)
                logger.setLevel(level)


@contextlib.contextmanager
def silent_stderr(enabled: bool) -> Iterator[None]:
    """--quiet: nothing on stderr while the model loads and runs, download bars included (an error
    still ends as the one line printed after this)."""
    if not enabled:
        yield
        return
    with open(os.devnull, 'w') as devnull, contextlib.redirect_stderr(devnull):
        yield


def _quiet_hf_logging(module_name: str) -> Callable[[], None]:
    import importlib

    try:
        hf_logging = importlib.import_module(module_name)
    except ImportError:
        return lambda: None
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def undo() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return undo


def verbose(args: argparse.Namespace) -> bool:
    """--verbose of a subcommand, or the `modelscope` command's own -v: keep log lines and tracebacks."""
    return bool(getattr(args, 'sdxl_verbose', False) or getattr(args, 'verbose', False))
