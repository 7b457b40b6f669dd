"""What every stage of the benchmark shares: test clips, multipart bodies, /metrics, server CPU and memory."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from testkit import audiofiles as af

CLIP_SECONDS = 5.0  # one model window, as ESC-50 clips are
CLIP_RATE = 44100  # ESC-50's rate: the served path resamples to the model's 22.05 kHz
FORMATS = {  # name -> (libsndfile format, subtype)
    "WAV": ("WAV", "PCM_16"),
    "FLAC": ("FLAC", "PCM_16"),
    "OGG": ("OGG", "VORBIS"),
    "MP3": ("MP3", "MPEG_LAYER_III"),
}


def clip(seconds: float = CLIP_SECONDS, rate: int = CLIP_RATE, seed: int = 0) -> np.ndarray:
    """A mono test signal: a sine of a seed-dependent pitch over quiet noise, float32 (frames,)."""
    x = af.sine(freq=220.0 + 37.0 * (seed % 50), seconds=seconds, rate=rate, amplitude=0.4)
    return np.clip(x + af.noise(seconds, rate, amplitude=0.05, seed=seed), -1, 1).astype(np.float32)


def clip_file(fmt: str = "WAV", seconds: float = CLIP_SECONDS, rate: int = CLIP_RATE, seed: int = 0) -> bytes:
    container, subtype = FORMATS[fmt]
    return af.encode(clip(seconds, rate, seed), rate, container, subtype)


def multipart(data: bytes, *, field: str = "audio", filename: str = "clip.wav",
              fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field (and text fields): (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(latencies_s) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


# --- the served process --------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCounters:
    """Cumulative `sound_forward_batch_size` histogram totals: clips and forward passes."""

    clips: float
    passes: float

    def mean_since(self, before: BatchCounters) -> float | None:
        passes = self.passes - before.passes
        return (self.clips - before.clips) / passes if passes > 0 else None


def batch_counters(base_url: str) -> BatchCounters:
    r = httpx.get(f"{base_url}/metrics", timeout=30)
    r.raise_for_status()
    totals = {"sound_forward_batch_size_sum": 0.0, "sound_forward_batch_size_count": 0.0}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name in totals:
                totals[s.name] += s.value
    return BatchCounters(totals["sound_forward_batch_size_sum"], totals["sound_forward_batch_size_count"])


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_sum(pid: int, value: Callable[[psutil.Process], float]) -> float:
    """`value` summed over a process and its descendants, skipping any that exit meanwhile."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += value(p)
    return total


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the arbiter and its workers), MB."""
    return tree_sum(pid, lambda p: p.memory_info().rss) / 2**20


def tree_memory(pid: int) -> dict:
    """The served tree's memory, MiB: `rss` summed over the processes (the figure the report uses:
    what `ps` shows a user), `pss` (shared pages split between the processes that map them, so
    libraries two workers share count once), and each process's RSS with its command."""
    rss = pss = 0
    processes = []
    for p in process_tree(pid):
        try:
            info = p.memory_full_info()
            cmdline = p.cmdline()
            # Without the interpreter's path: "bentoml serve service:...", "-m _bentoml_impl.worker.service ..."
            command = " ".join([Path(cmdline[1]).name, *cmdline[2:4]] if len(cmdline) > 1 else cmdline)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + info.pss
        processes.append({"pid": p.pid, "rss_mb": info.rss / 2**20, "command": command[:120]})
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": processes}


TORCH_LIBRARIES = ("libtorch", "libc10")


def libtorch_maps(pid: int) -> dict:
    """Which processes of the tree map PyTorch's native libraries (/proc/PID/maps): serving
    needs no PyTorch, checked on the running server."""
    mapped, processes = [], 0
    for p in process_tree(pid):
        try:
            maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            continue
        processes += 1
        if any(lib in maps for lib in TORCH_LIBRARIES):
            mapped.append(p.pid)
    return {"processes": processes, "mapped": mapped}


class RssSampler:
    """Samples the RSS of a process tree every `interval_s` on a thread, from the moment `pid_of()`
    names a process (a server being launched) until `stop()`: the start-up peak, which a worker
    compiling its engine may hold only for a moment."""

    def __init__(self, pid_of: Callable[[], int | None], interval_s: float = 0.05):
        self.samples: list[tuple[float, float]] = []  # (seconds since start(), MiB)
        self._pid_of = pid_of
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            pid = self._pid_of()
            if pid is None:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                self.samples.append((time.perf_counter() - self._t0, tree_rss_mb(pid)))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        at, peak = max(self.samples, key=lambda s: s[1], default=(float("nan"), float("nan")))
        return {"peak_mb": peak, "peak_at_s": at, "samples": len(self.samples), "interval_s": self._interval_s}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    return tree_sum(pid, lambda p: sum(p.cpu_times()[:2]))  # user, system


def settle(pid: int, *, busy_cores: float = 0.05, window_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait until a server's process tree uses less than `busy_cores` of CPU over `window_s`;
    returns the seconds waited. A server answers /readyz as soon as one worker is up, while the
    others may still be loading and measuring their engines on every core: loads measured then
    paid for it (the one-client point of a full run started 3 s after a worker was still busy)."""
    start = time.monotonic()
    before = tree_cpu_s(pid)
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = tree_cpu_s(pid)
        if now - before < busy_cores * window_s:
            break
        before = now
    return time.monotonic() - start


@contextlib.contextmanager
def paused(process_groups: Iterable[int]) -> Iterator[None]:
    """SIGSTOP these process groups for the block, SIGCONT after: an idle server is not always
    idle (LitServe's workers poll their queues, 18% of a core here), and the one under load
    should have the machine to itself."""
    groups = list(process_groups)
    try:
        for group in groups:
            os.killpg(group, signal.SIGSTOP)
        yield
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)


def in_turn(pids: dict[str, int | None], rounds: int, shuffle: bool = False) -> Iterator[tuple[int, str]]:
    """(round, name) for every server in turn, round after round (in a random order each round if
    `shuffle`); while the caller measures one, the others (process groups `pids`) are paused. Two
    names may share a server (two measurements of it); a name without one (None) is measured in
    this process, with every server paused."""
    for r in range(rounds):
        names = random.sample(list(pids), len(pids)) if shuffle else list(pids)
        for name in names:
            with paused({pid for pid in pids.values() if pid is not None and pid != pids[name]}):
                yield r, name


def http_floor(port: int, env: dict[str, str] | None = None):
    """The HTTP floor (bench/floor_service.py) served on 127.0.0.1:`port` in its own session and
    BentoML home, up once /readyz answers: a testkit.edge_probe.Background (`stop()` ends it)."""
    from testkit.edge_probe import Background

    bentoml = str(Path(sys.executable).with_name("bentoml"))
    return Background([bentoml, "serve", "bench.floor_service:HttpFloor", "--host", "127.0.0.1", "--port", str(port)],
                      port, env=env, ready_path="/readyz", start_timeout_s=120)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
