"""What the CPU can do, detected rather than assumed (used to pick precision and engines)."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX); emulated bf16 is slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def single_threaded_blas() -> None:
    """Keep numpy's BLAS (OpenBLAS in the numpy wheels) on the calling thread, for this whole process.

    The feature step's matrix products are small (0.04 ms per clip on one thread). OpenBLAS
    splits them over its own process-wide pool, whose threads then wait for cores the engine and
    the other request threads hold: the mel product took 8-12 ms instead of 0.1 on a busy 2-core
    machine here. The limit is process-wide because OpenBLAS's pool is; nothing else heavy in
    this project runs on numpy's BLAS (the engines and PyTorch bring their own thread pools).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
