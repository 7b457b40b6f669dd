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

Two changes to its policy (`_ClipDispatcher`), each for a failure measured here:
- Its latency model (a * n + b, fitted over recent forward passes) counts requests, but a queued
  request is one clip or a chunk of up to `max_batch_size` timeline windows. Fitted on timeline
  chunks, it charges every later request a whole chunk's time: after 16 chunks of 16 windows
  (130 ms each), 19 of a burst of 64 single clips (8 ms each, 0.5 s to drain) were refused under a
  3 s budget (tests/test_batching.py::test_a_burst_after_timelines_is_not_refused). Here the model
  is fitted over clips, robustly (`_ClipLatency`: a few passes stalled behind a large upload's
  decoding no longer bend it into refusing everything queued), and a request is refused when *its
  own* expected wait (what it has waited, the rest of the running pass, then the batches ahead of
  it and its own) would pass `max_latency_ms`, at once rather than after waiting; BentoML refuses
  the oldest request while the whole queue's estimate is over the budget. Refusals are logged with
  the estimate.
- BentoML holds a batch back while the queue is younger than the *average wait of recent
  batches*, and that average feeds on itself: after a burst of load, a lone request waited 200 ms
  for partners that never came (engine time 5 ms). Here a batch leaves as soon as the engine is
  free, and whatever queued while it was busy forms the next batch: batches grow with load and an
  idle server answers at once. BentoML's warm-up (holding the first requests to time batches of
  2 and 3) is skipped: the model starts from the engine's per-clip time measured at start-up.

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
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Job, Optimizer

from soundclassifier.errors import OverloadedError

log = logging.getLogger("soundclassifier")
LOG_EVERY_S = 10.0


class _ClipLatency(Optimizer):
    """BentoML's latency model, a * clips + b over recent forward passes, counted in clips and
    fitted robustly.

    Starts from the engine's measured per-clip time instead of BentoML's guess (2/30 of the
    latency budget per item). BentoML fits a and b by least squares; but a pass's duration also
    holds its wait for the engine's stream threads, which decoding a large upload can keep busy
    for seconds, and a few such passes of one clip bent that fit to "0.0 ms a clip + 4568.5 ms a
    pass": every request queued behind a pass was then refused (`make bench`'s hostile burst,
    docs/performance.md). Here a is never below the engine's measured per-clip time, and b is
    the median of what the passes took beyond a * clips, so stalled passes move it only once they
    are most of the recent ones."""

    def __init__(self, max_latency: float, seconds_per_clip: float):
        super().__init__(max_latency)
        self.o_a, self.o_b = seconds_per_clip, seconds_per_clip
        self.min_a = seconds_per_clip
        self.clips = 0  # clips in the forward pass running now: BentoML reports only its requests

    def log_outbound(self, n: int, wait: float, duration: float) -> None:
        super().log_outbound(self.clips, wait, duration)

    def trigger_refresh(self) -> None:
        if not self.o_stat:
            return
        clips, durations, _ = (np.array(column, dtype=float) for column in zip(*self.o_stat, strict=True))
        a = self.min_a
        if np.ptp(clips) > 0:  # a slope needs passes of different sizes
            a = max(a, float(np.polyfit(clips, durations, 1)[0]))
        self.o_a, self.o_b = a, max(0.0, float(np.median(durations - a * clips)))

    def seconds(self, clips: int, batches: int) -> float:
        return self.o_a * clips + self.o_b * batches


class _ClipDispatcher(CorkDispatcher):
    """CorkDispatcher (its queue, its splitting of a request across batches, its forward-pass
    call) with this module's policy in `controller`."""

    optimizer: _ClipLatency

    def __init__(self, *, seconds_per_clip: float, **kwargs):
        super().__init__(**kwargs)
        self.optimizer = _ClipLatency(self.max_latency, seconds_per_clip)
        self.engine_free_at = 0.0  # expected end of the running forward pass (time.time())
        self._checked = 0  # queue length at the last shedding pass
        self._unlogged, self._logged_at = 0, 0.0  # refusals not yet logged, time of the last log line

    def _has_news(self) -> bool:
        """Something to do: a request queued while the engine is free, or one more (or fewer)
        queued than at the last shedding pass while it is busy."""
        return bool(self._queue) and (not self._sema.is_locked() or len(self._queue) != self._checked)

    async def controller(self) -> None:
        # Woken by events, not a clock: an arrival (BentoML's `inbound_call` notifies) or the end
        # of a forward pass (`outbound_call` below). BentoML's controller polls every millisecond
        # while a batch runs, which under load is most of the time.
        while True:
            try:
                async with self._wake_event:
                    await self._wake_event.wait_for(self._has_news)
                running = self._sema.is_locked()
                # A request's expected wait changes when one arrives (the newest) or when a batch
                # leaves (all of them): check then, not every tick.
                self._shed(time.time(), running)
                if running or not self._queue:
                    continue
                self._sema.acquire()
                jobs = tuple(self._get_inputs())
                self.optimizer.clips = clips = sum(self.get_batch_size(job.data) for job in jobs)
                self.engine_free_at = time.time() + self.optimizer.seconds(clips, 1)
                self._checked = len(self._queue)
                self._loop.create_task(self.outbound_call(jobs))
            except Exception:
                log.exception("batching: error dispatching a batch")

    async def outbound_call(self, inputs_info: tuple[Job, ...], training: bool = False) -> None:
        try:
            await super().outbound_call(inputs_info, training)
        finally:  # the engine is free (BentoML released it): the queue's next batch may leave
            async with self._wake_event:
                self._wake_event.notify_all()

    def _shed(self, now: float, running: bool) -> None:
        """Refuse every queued request that would not be answered within the budget, counting what
        it has waited, the rest of the running pass, the batches ahead of it and its own."""
        ahead = max(0.0, self.engine_free_at - now) if running else 0.0
        kept: list[Job] = []
        refused = clips = 0
        for job in self._queue:
            n = self.get_batch_size(job.data)
            done_in = ahead + self.optimizer.seconds(clips + n, math.ceil((clips + n) / self.max_batch_size))
            # One that would start now is never refused: a slow engine still answers, one at a time.
            if (running or clips) and now - job.enqueue_time + done_in >= self.max_latency:
                job.future.cancel()  # the caller gets `fallback()`: OverloadedError
                refused += 1
            else:
                kept.append(job)
                clips += n
        if refused:
            self._queue.clear()
            self._queue.extend(kept)
            self._unlogged += refused
            if now - self._logged_at >= LOG_EVERY_S:  # one line at most every LOG_EVERY_S under overload
                log.warning("batching: refused %d queued requests that would wait over %.1f s (now %d clips "
                            "kept; estimate %.1f ms a clip + %.1f ms a batch, %.2f s left of the running pass)",
                            self._unlogged, self.max_latency, clips, self.optimizer.o_a * 1e3,
                            self.optimizer.o_b * 1e3, ahead)
                self._unlogged, self._logged_at = 0, now
        self._checked = len(self._queue)


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
        self._dispatcher = _ClipDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=self._overloaded,
            get_batch_size=len,
            batch_dim=(0, 0),
            seconds_per_clip=seconds_per_clip,
        )
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
