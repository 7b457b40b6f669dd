"""Adaptive batching shared by every in-process front door (HTTP routes, gRPC, the page).

This is BentoML's own adaptive batcher, `CorkDispatcher` (the object `@bentoml.api(batchable=True)`
creates per worker), used directly rather than through a batchable API. Why: a batchable API can
only be reached from another API of the same service through BentoML's self-proxy, which
serialises every spectrogram to JSON (27 ms per 128x216 clip measured here, more than the forward
pass itself), and it cannot fail one item of a batch with that item's own 4xx. Here decoding and
validation happen per request first; only valid spectrograms are queued, and a queued item is an
array of shape (n, 1, n_mels, frames): one clip, or a chunk of timeline windows that the
dispatcher may split across forward passes.

The dispatcher fits latency ~ a * n + b over recent batches and releases a batch when waiting
longer would not pay; an item that would wait past `max_latency_ms` is cancelled and the caller
gets `OverloadedError` (front doors answer 503 + Retry-After / UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher


class OverloadedError(Exception):
    """The queue is longer than the latency budget allows; retry later."""


class Batcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_latency_ms: int,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.on_batch = on_batch
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
        self._submit = self._dispatcher(self._run_batch)

    @staticmethod
    def _overloaded() -> np.ndarray:
        raise OverloadedError("the server is busy; retry shortly")

    async def _run_batch(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(x) for x in items]
        batch = np.concatenate(items) if len(items) > 1 else items[0]
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._executor, self.forward, batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        return np.split(out, np.cumsum(sizes)[:-1])

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for `inputs` (n, ...) computed in shared forward passes; may raise OverloadedError."""
        return await self._submit(inputs)

    def close(self) -> None:
        self._dispatcher.shutdown()
        self._executor.shutdown(wait=False, cancel_futures=True)
