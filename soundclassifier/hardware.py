"""What the CPU can do, detected rather than assumed (used to pick precision and engines)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads in the calling thread only.

    With PyTorch's OpenMP backend the setting is per calling thread. Per-clip feature work is too
    small to split, and several request threads each opening a 2-thread OpenMP team beside the
    engine's own made the mel step 50x slower here under load; so features run single-threaded
    and the engine keeps the cores.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
