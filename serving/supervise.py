"""Worker supervision: a dead worker must not go unnoticed, and a worker gives back what it freed.

BentoML runs the service's workers as one circus watcher (`_bentoml_impl/server/serving.py`
serve_http -> `bentoml.serving.create_watcher`), created with `respawn=not
running_inside_container()` (bentoml/serving.py:125), and `running_inside_container()` is true
whenever BENTOML_CONTAINERIZED is set (bentoml/serving.py:100-104), as BentoML's images set it.
Circus then drops a dead worker for good (circus/watcher.py manage_processes: it only spawns
`if self.respawn`), and every route, /livez included, is answered by the survivors: one OOM kill
silently halves the pod. (Outside containers circus respawns it at its next check, every
`check_delay` = 10 s as BentoML sets it: bentoml/_internal/utils/circus/__init__.py:103.)

`WorkerCensus.healthy()` is the worker side of BentoML's liveness hook: a service class that
defines `__is_alive__` gets /livez answered 503 when it returns False (`_bentoml_impl/server/
app.py` livez). Every worker counts the live worker processes of its own arbiter (the siblings
that run the same command line as itself), so whichever worker answers the probe, a missing one
makes /livez fail, and the orchestrator restarts the pod.

A worker that is alive but stuck (its event loop blocked: a handler that never yields, a deadlock)
answers nothing, and the kernel hands the probe's connection to a sibling, which answered 200:
the pod looked healthy while part of its capacity was gone. So every worker also beats a
heartbeat from its event loop (a file per worker, in a directory of the arbiter's, rewritten
every second by a loop callback), and `healthy()` fails while a sibling's is older than
`stall_s` (SOUND_WORKER_STALL_S); a probe that reaches the stuck worker itself times out.

`respawn_in_containers()` is the other half, for a container with no orchestrator watching it
(plain `docker run`): it makes BentoML's watcher respawn there too. It must run in the arbiter
process before the watchers are created; BentoML imports the service module there first
(bentoml_cli/serve.py: `load(bento_identifier=bento, ...)` before `serve_http`), so a service
module that wants it calls it at import. service.py does not call it, so in its image a dead
worker stays dead and /livez fails until whatever watches /livez restarts the container. Only
testkit/edge_service.py calls it (with EDGE_RESPAWN=1), for tests/test_supervise.py, which shows a
killed worker replaced with it and fails if the BentoML internal it replaces moves.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

log = logging.getLogger("sound_classifier")
WORKER_MODULE = "_bentoml_impl.worker.service"  # what circus runs: `python -m` this, per worker


def _without_worker_id(cmdline: list[str]) -> list[str]:
    out, skip = [], False
    for arg in cmdline:
        if skip:
            skip = False
        elif arg == "--worker-id":
            skip = True
        elif not arg.startswith("--worker-id="):
            out.append(arg)
    return out


class WorkerCensus:
    """Counts this worker and its live siblings (same arbiter, same command but the worker id), and
    their heartbeats.

    Args:
        expected (int): worker processes the service runs (its `workers`).
        grace_s (float): how long a worker may be missing before `healthy()` says so; 0 for a
            container where nothing respawns it (the orchestrator's probe period and failure
            threshold are the grace), more where circus respawns it at its next check.
        stall_s (float): how old a sibling's heartbeat may be before `healthy()` says it is stuck.
    """

    BEAT_S = 1.0

    def __init__(self, expected: int, grace_s: float = 0.0, stall_s: float = 10.0):
        self.expected = expected
        self.grace_s = grace_s
        self.stall_s = stall_s
        me = psutil.Process()
        self.command = _without_worker_id(me.cmdline())
        # Not a BentoML worker (the class instantiated in a test, a notebook): nothing to count.
        self.in_worker = WORKER_MODULE in self.command
        self.arbiter = me.parent()
        self.missing_since: float | None = None
        self.beats = Path(tempfile.gettempdir()) / f"sound-census-{self.arbiter.pid}"
        try:  # BentoML builds the service inside the worker's running event loop (create_instance)
            self._loop = asyncio.get_running_loop() if self.in_worker else None
        except RuntimeError:
            self._loop = None
            log.warning("no running event loop: this worker beats no heartbeat")
        if self._loop is not None:
            self.beats.mkdir(mode=0o700, exist_ok=True)
            self._beat()

    def _beat(self) -> None:
        (self.beats / str(os.getpid())).write_text(repr(time.monotonic()))
        self._loop.call_later(self.BEAT_S, self._beat)

    def siblings(self) -> list[psutil.Process]:
        """The live worker processes of this arbiter, this one included."""
        try:
            children = self.arbiter.children()
        except psutil.NoSuchProcess:  # the arbiter itself is gone
            return []
        found = []
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and _without_worker_id(child.cmdline()) == self.command:
                    found.append(child)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        return found

    def alive(self) -> int:
        return len(self.siblings())

    def stalled(self, workers: list[psutil.Process]) -> list[int]:
        """Pids of `workers` whose heartbeat is older than `stall_s` (none yet: starting, not stuck)."""
        now, stuck = time.monotonic(), []
        for worker in workers:
            try:
                beat = float((self.beats / str(worker.pid)).read_text())
            except (OSError, ValueError):  # not beating yet, or caught mid-write
                continue
            if now - beat > self.stall_s:
                stuck.append(worker.pid)
        return stuck

    def healthy(self) -> bool:
        if not self.in_worker:
            return True
        workers = self.siblings()
        if stuck := self.stalled(workers):
            log.warning("worker processes %s: event loop stalled for over %g s", stuck, self.stall_s)
            return False
        alive = len(workers)
        if alive >= self.expected:
            self.missing_since = None
            return True
        now = time.monotonic()
        if self.missing_since is None:
            self.missing_since = now
            log.warning("%d of %d worker processes alive", alive, self.expected)
        return now - self.missing_since < self.grace_s


def respawn_in_containers() -> None:
    """Have BentoML's circus watchers respawn dead workers in a container too. Call at import of
    the service module; it matters only in the arbiter process (harmless in workers)."""
    import bentoml.serving

    bentoml.serving.running_inside_container = lambda: False


MiB = 2**20


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HeapTrimmer:
    """Returns the C heap's free memory to the system once a burst of work is over.

    glibc keeps what a process frees in its arenas' free lists (small chunks in fastbins, which it
    neither merges nor returns until something asks it to) and gives memory back by itself only
    from the top of a heap. After 64 idle gRPC streams of a 1 MiB chunk each, one worker held
    +135 MiB of RSS with no Python object behind it (tracemalloc flat; glibc's malloc_info: 132 MiB
    free in the main arena), and kept it; the issue's hostile suite left a 2-worker tree at 2.06x
    its warmed-up size. `malloc_trim(0)` merges the free lists and returns every free page (from
    the middle of a heap too): that worker went back from 352 to 220 MiB in 10-35 ms.

    Part of what those streams held was not free yet: each aborted call leaves a reference cycle
    (its exception, traceback and frames, the frames holding the call's chunks), and the cycle
    collector, which counts objects and not bytes, may not run for minutes in an idle worker while
    a few dozen objects hold megabytes of message buffers. So an idle worker collects (cheap: what
    was loaded at start is frozen out of the collector, service.py) before it trims.

    A thread (so a busy or blocked event loop does not delay it) reads the process's RSS every
    `period_s` and trims while it is `grown_bytes` or more above the lowest a trim has brought it
    to (the worker's working set): at once when the worker is idle (`busy()` false), at most every
    `max_interval_s` under load. RSS growth alone cannot be the trigger: memory freed after the
    check that saw it grow (streams that ended) leaves RSS where it was. A trim with nothing to
    return costs 0.1-0.2 ms; ctypes releases the GIL and glibc locks one arena at a time. No
    environment setting is needed, so `bentoml serve` with no flags behaves alike.
    """

    def __init__(self, busy: Callable[[], bool], grown_bytes: int = 16 * MiB, period_s: float = 2.0,
                 max_interval_s: float = 10.0):
        self.busy = busy
        self.grown_bytes = grown_bytes
        self.period_s = period_s
        self.max_interval_s = max_interval_s
        self.trims = 0
        self.returned = 0  # bytes of RSS the trims gave back, in all
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)

    def start(self) -> HeapTrimmer:
        if self._trim is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def trim(self) -> int:
        """Trim now; the RSS it gave back (bytes)."""
        before = _rss()
        self._trim(0)
        after = _rss()
        self.trims += 1
        self.returned += max(0, before - after)
        log.debug("malloc_trim: RSS %.0f -> %.0f MiB", before / MiB, after / MiB)
        return before - after

    def _run(self) -> None:
        floor, last = _rss(), time.monotonic()
        while not self._stop.wait(self.period_s):
            if _rss() - floor < self.grown_bytes:
                continue
            now = time.monotonic()
            if self.busy() and now - last < self.max_interval_s:
                continue
            if not self.busy():
                gc.collect()
            self.trim()
            floor, last = min(floor, _rss()), now
