"""Worker supervision: a dead worker must not go unnoticed.

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

`respawn_in_containers()` is the other half, for a container with no orchestrator watching it
(plain `docker run`): it makes BentoML's watcher respawn there too. It must run in the arbiter
process before the watchers are created; BentoML imports the service module there first
(bentoml_cli/serve.py: `load(bento_identifier=bento, ...)` before `serve_http`), so the service
module calls it at import. It replaces a BentoML internal: tests/test_supervise.py fails if that
internal moves.
"""

from __future__ import annotations

import logging
import time

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
    """Counts this worker and its live siblings (same arbiter, same command but the worker id).

    Args:
        expected (int): worker processes the service runs (its `workers`).
        grace_s (float): how long a worker may be missing before `healthy()` says so; 0 for a
            container where nothing respawns it (the orchestrator's probe period and failure
            threshold are the grace), more where circus respawns it at its next check.
    """

    def __init__(self, expected: int, grace_s: float = 0.0):
        self.expected = expected
        self.grace_s = grace_s
        me = psutil.Process()
        self.command = _without_worker_id(me.cmdline())
        # Not a BentoML worker (the class instantiated in a test, a notebook): nothing to count.
        self.in_worker = WORKER_MODULE in self.command
        self.arbiter = me.parent()
        self.missing_since: float | None = None

    def alive(self) -> int:
        count = 0
        try:
            children = self.arbiter.children()
        except psutil.NoSuchProcess:  # the arbiter itself is gone
            return 0
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE and _without_worker_id(child.cmdline()) == self.command:
                    count += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        return count

    def healthy(self) -> bool:
        if not self.in_worker:
            return True
        alive = self.alive()
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
