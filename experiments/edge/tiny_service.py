"""A stock BentoML service with no edge code and no model: the "before" of docs/edge.md's figures.

    bentoml serve experiments.edge.tiny_service:Tiny --port 3101     # TINY_WORKERS=2 by default

/echo answers its text, /slow sleeps (a cancellation is logged to $TINY_CANCEL_LOG), /proto lists
the uvicorn protocol classes live in the worker. testkit/edge_service.py is the same with the edge.
"""

import asyncio
import gc
import os
import time

import bentoml


@bentoml.service(workers=int(os.environ.get("TINY_WORKERS", "2")), traffic={"timeout": 600})
class Tiny:
    @bentoml.api
    def echo(self, text: str = "x") -> str:
        return text

    @bentoml.api
    async def slow(self, seconds: float = 5.0) -> str:
        t0 = time.monotonic()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            with open(os.environ.get("TINY_CANCEL_LOG", os.devnull), "a") as f:
                f.write(f"{time.time():.3f} cancelled after {time.monotonic() - t0:.3f}\n")
            raise
        return "done"

    @bentoml.api
    def proto(self) -> dict:
        import uvicorn.config as uc
        import uvicorn.protocols.http.auto as auto

        protos = sorted(
            {
                type(o).__module__ + "." + type(o).__name__
                for o in gc.get_objects()
                if type(o).__name__.endswith("Protocol") and hasattr(o, "transport")
            }
        )
        return {
            "auto": repr(auto.AutoHTTPProtocol),
            "registry": uc.HTTP_PROTOCOLS["auto"],
            "live": protos,
            "pid": os.getpid(),
        }
