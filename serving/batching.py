"""The pipeline's batcher on BentoML: adaptive batching shared by every front door of a worker
(HTTP routes, gRPC, the page). The one module that touches BentoML's dispatcher internals; the
test tests/test_batching.py::test_bentoml_dispatcher_is_what_the_adapter_expects fails loudly if
a BentoML upgrade changes what it relies on.

This is BentoML's own adaptive batcher, `CorkDispatcher` (the object `@bentoml.api(batchable=True)`
creates per worker), used directly rather than through a batchable API. Why: a batchable API can
only be reached from another API of the same service through BentoML's self-proxy, which
serialises every spectrogram to JSON (27 ms per 128x216 clip measured here, more than the forward
pass itself), and it cannot fail one item of a batch with that item's own 4xx. Here decoding and
validation happen per request first; only valid spectrograms are queued, and a queued item is an
array of shape (n, 1, n_mels, frames): one clip, or a chunk of timeline windows that the
dispatcher may split across forward passes.

The dispatcher fits latency ~ a * n + b over recent batches and cancels an item that would wait
past `max_latency_ms`; the caller gets `OverloadedError` (front doors answer 503 + Retry-After /
UNAVAILABLE). One change to its policy (`_DispatchWhenIdle`): BentoML also holds a batch back while
the queue is younger than the *average wait of recent batches*, and that average feeds on itself:
after a burst of load, a lone request waited 200 ms for partners that never came (measured here,
engine time 5 ms). Here a batch leaves as soon as the engine is free, and whatever queued while
it was busy forms the next batch: batches grow with load and an idle server answers at once.

CPU budget: the request path (decoding, features) runs on the engine's own stream threads
(`Engine.workers`, one per stream) through the pipeline's `Preparer`, not on a thread per request, nor on a pool of
its own beside the engine: either way the busy threads outnumbered the cores, and every clip's
features took longer while a batch ran (4.4 vs 3 ms here). On one pool, preparing clips and the
engine's single-threaded parts take turns, and the cores never idle while either has work.
A batch runs wide (one engine call on every core) only when nothing else is queued or being
prepared; otherwise the engine runs it as single-threaded streams on those threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from soundclassifier.pipeline import OverloadedError


class _DispatchWhenIdle(Optimizer):
    """BentoML's latency model (a * n + b, fitted as it serves), without the learned wait.

    Starts from the engine's measured per-clip time instead of BentoML's guess (2/30 of the
    latency budget per item), so the first requests are not held for warm-up batches either."""

    def __init__(self, max_latency: float, seconds_per_clip: float):
        super().__init__(max_latency)
        self.o_a, self.o_b = seconds_per_clip, seconds_per_clip

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0


class AdaptiveBatcher:
    """`soundclassifier.pipeline.Batcher` on BentoML's dispatcher; `functools.partial` it with
    the two limits to get the pipeline's `make_batcher`."""

    def __init__(
        self,
        forward: Callable[[np.ndarray, bool], np.ndarray],
        *,
        max_batch_size: int,
        max_latency_ms: int,
        seconds_per_clip: float = 0.01,
        on_batch: Callable[[int], None] | None = None,
        others_busy: Callable[[], bool] = lambda: False,
    ):
        """`forward(batch, wide)`; `others_busy()`: is the request path using the CPU right now."""
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.on_batch = on_batch
        self.others_busy = others_busy
        self.running = 0  # forward passes in progress (0 or 1)
        # One forward pass at a time (the dispatcher guarantees it too); the engine itself uses
        # all the cores it was given, so more threads here would only fight over them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._dispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=self._overloaded,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self._dispatcher.optimizer = _DispatchWhenIdle(max_latency_ms / 1000, seconds_per_clip)
        self._submit = self._dispatcher(self._run_batch)

    @staticmethod
    def _overloaded() -> np.ndarray:
        raise OverloadedError("the server is busy; retry shortly")

    async def _run_batch(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(x) for x in items]
        batch = np.concatenate(items) if len(items) > 1 else items[0]
        # Wide only when this batch has the machine to itself: nothing queued, nothing being prepared.
        wide = not self._dispatcher._queue and not self.others_busy()
        loop = asyncio.get_running_loop()
        self.running += 1
        try:
            out = await loop.run_in_executor(self._executor, self.forward, batch, wide)
        finally:
            self.running -= 1
        if self.on_batch is not None:
            self.on_batch(len(batch))
        return np.split(out, np.cumsum(sizes)[:-1])

    def idle(self) -> bool:
        """Nothing queued and no forward pass running."""
        return not self.running and not self._dispatcher._queue

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for `inputs` (n, ...) computed in shared forward passes; may raise OverloadedError."""
        return await self._submit(inputs)

    def close(self) -> None:
        self._dispatcher.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)
