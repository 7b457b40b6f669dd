"""A tiny BentoML service with the edge and supervision prototypes wired in as service.py would.

    EDGE_HEAD_S=2 bentoml serve testkit.edge_service:EdgeTiny        # no flags, as users start it

Test-only: its limits come from EDGE_* variables so tests can make them short; the real service
would take them from soundclassifier/config.py. EDGE_RESPAWN=1 turns on respawn_in_containers().
EDGE_TIMEOUT_S is BentoML's request deadline (traffic timeout; `install()` makes it RequestDeadline).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

import bentoml

from serving.edge import CancelOnDisconnect, EdgeLimits, install
from serving.supervise import WorkerCensus, respawn_in_containers

WORKERS = int(os.environ.get("EDGE_WORKERS", "2"))
install(EdgeLimits(
    head_timeout_s=float(os.environ.get("EDGE_HEAD_S", "30")),
    body_idle_s=float(os.environ.get("EDGE_BODY_S", "30")),
    keep_alive_s=float(os.environ.get("EDGE_KEEP_ALIVE_S", "75")),
))
if os.environ.get("EDGE_RESPAWN") == "1":
    respawn_in_containers()


@bentoml.service(workers=WORKERS, traffic={"timeout": float(os.environ.get("EDGE_TIMEOUT_S", "600"))})
class EdgeTiny:
    def __init__(self) -> None:
        self.census = WorkerCensus(WORKERS, stall_s=float(os.environ.get("EDGE_STALL_S", "10")))

    async def __is_alive__(self) -> bool:
        return self.census.healthy()

    @bentoml.api
    def echo(self, text: str = "x") -> str:
        return text

    @bentoml.api
    async def wedge(self, seconds: float = 60.0) -> int:
        """Block this worker's event loop (a handler that never yields): a stuck worker."""
        time.sleep(seconds)
        return os.getpid()

    @bentoml.api
    async def pid(self) -> int:
        return os.getpid()

    @bentoml.api
    async def timers(self) -> int:
        """How many event-loop timers this worker holds (uvloop's TimerHandle objects)."""
        return sum(type(o).__name__ == "TimerHandle" for o in gc.get_objects())

    @bentoml.api
    async def slow(self, seconds: float = 30.0) -> str:
        start = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            with open(os.environ["EDGE_CANCEL_LOG"], "a") as f:
                f.write(f"cancelled {time.monotonic() - start:.3f} {time.time():.3f}\n")
            raise
        return "done"


EdgeTiny.add_asgi_middleware(CancelOnDisconnect)
