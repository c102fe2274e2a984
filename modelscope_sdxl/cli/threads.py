"""Torch threads for one command-line process.

torch sizes its thread pool from the machine's cores, not from the CPUs this process may use: in
a container limited by a cgroup CPU quota or a CPU affinity mask, more threads than CPUs only spin
against each other. A command line is one process doing one job, so it uses the CPUs it has.
OMP_NUM_THREADS (or MODELSCOPE_SDXL_THREADS), when set, decides instead.
"""
from __future__ import annotations

import math
import os
from typing import Optional

THREADS_VARIABLE = 'MODELSCOPE_SDXL_THREADS'


def _cgroup_cpus(path: str = '/sys/fs/cgroup/cpu.max') -> Optional[int]:
    """CPUs allowed by a cgroup v2 quota ('max' or unreadable: no limit)."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == 'max':
        return None
    return max(1, math.floor(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return min(cpus, quota) if quota else cpus


def cli_threads() -> Optional[int]:
    """The intra-op threads a command should use; None leaves torch's setting (OMP_NUM_THREADS given)."""
    wanted = os.environ.get(THREADS_VARIABLE)
    if wanted:
        try:
            value = int(wanted)
        except ValueError:
            raise ValueError(f'{THREADS_VARIABLE} must be a positive integer, got {wanted!r}') from None
        if value < 1:
            raise ValueError(f'{THREADS_VARIABLE} must be a positive integer, got {wanted!r}')
        return value
    if os.environ.get('OMP_NUM_THREADS'):
        return None
    return available_cpus()


def use_cli_threads() -> None:
    """Set torch's threads for this process as :func:`cli_threads` says."""
    threads = cli_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
