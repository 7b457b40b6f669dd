"""The shared batcher and the preparer, in process (the served behaviour is in
test_service.py): batches merge concurrent requests, and the engine runs wide only when a batch
has the machine to itself."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import AdaptiveBatcher as Batcher
from soundclassifier.config import Settings
from soundclassifier.errors import OverloadedError
from soundclassifier.pipeline import Preparer


class Recorder:
    """A forward pass that records (batch size, wide) and takes `seconds` like a real engine."""

    def __init__(self, seconds: float = 0.02, per_clip: float = 0.0):
        self.calls: list[tuple[int, bool]] = []
        self.seconds, self.per_clip = seconds, per_clip
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # a forward pass has started (and may be held by `release`)

    def __call__(self, batch: np.ndarray, wide: bool) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30), "the test never released the forward pass"
        threading.Event().wait(self.seconds + self.per_clip * len(batch))
        self.calls.append((len(batch), wide))
        return batch.reshape(len(batch), -1).sum(1, keepdims=True) * 2


def item(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


async def until(condition, timeout_s: float = 30.0) -> None:
    """Yield to the loop until `condition()` holds: the event a test waits for, not a guessed delay."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_a_lone_request_runs_wide_and_answers_its_own_input():
    async def main():
        forward = Recorder()
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=5000)
        out = await batcher(item(1.5))
        batcher.close()
        return forward.calls, out

    calls, out = run(main())
    assert calls == [(1, True)]
    assert out.tolist() == [[12.0]]  # 4 elements * 1.5 * 2


def test_queued_requests_merge_and_run_narrow_while_others_wait():
    async def main():
        forward = Recorder()
        forward.release.clear()  # hold the first pass so the others queue behind it
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=5000)
        first = asyncio.ensure_future(batcher(item(0.0)))
        await until(forward.entered.is_set)  # the first pass holds the engine
        rest = [asyncio.ensure_future(batcher(item(float(i)))) for i in range(1, 6)]
        await until(lambda: len(batcher._dispatcher._queue) == 5)  # all five wait behind it
        forward.release.set()
        outs = await asyncio.gather(first, *rest)
        batcher.close()
        return forward.calls, outs

    calls, outs = run(main())
    assert calls[0] == (1, True)
    assert sum(n for n, _ in calls) == 6 and len(calls) < 6, calls
    assert [o.tolist() for o in outs] == [[[8.0 * i]] for i in range(6)]  # each its own answer


def test_the_dispatcher_sleeps_while_a_pass_runs_and_wakes_when_it_ends():
    """The controller waits on events (an arrival, the end of a pass), never on a clock: while a
    held pass runs with a request queued behind it, it does not run at all (BentoML's polled every
    millisecond, most of the time under load), and the queued request still leaves when the pass
    ends."""

    async def main():
        forward = Recorder()
        forward.release.clear()
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=5000)
        dispatcher = batcher._dispatcher
        first = asyncio.ensure_future(batcher(item(1.0)))
        await until(forward.entered.is_set)
        second = asyncio.ensure_future(batcher(item(2.0)))
        await until(lambda: len(dispatcher._queue) == 1 and dispatcher._checked == 1)
        looked = 0
        has_news = dispatcher._has_news

        def counted() -> bool:
            nonlocal looked
            looked += 1
            return has_news()

        dispatcher._has_news = counted
        await asyncio.sleep(0.2)  # BentoML's controller would have looked ~200 times by now
        quiet = looked
        forward.release.set()
        outs = await asyncio.gather(first, second)
        batcher.close()
        return quiet, looked, forward.calls, outs

    quiet, looked, calls, outs = run(main())
    assert quiet == 0, f"the controller looked at the queue {quiet} times while nothing changed"
    assert looked >= 1 and [n for n, _ in calls] == [1, 1]
    assert [o.tolist() for o in outs] == [[[8.0]], [[16.0]]]


def test_idle_means_nothing_queued_and_nothing_running():
    async def main():
        forward = Recorder()
        forward.release.clear()
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=5000)
        seen = [batcher.idle()]
        job = asyncio.ensure_future(batcher(item(1.0)))
        await until(forward.entered.is_set)
        seen.append(batcher.idle())  # running
        forward.release.set()
        await job
        seen.append(batcher.idle())
        batcher.close()
        return seen

    assert run(main()) == [True, False, True]


def test_busy_feature_threads_keep_the_engine_off_the_wide_call():
    async def main():
        forward = Recorder()
        busy = True
        batcher = Batcher(forward, max_batch_size=8, max_latency_ms=5000, others_busy=lambda: busy)
        await batcher(item(1.0))
        busy = False
        await batcher(item(1.0))
        batcher.close()
        return forward.calls

    assert run(main()) == [(1, False), (1, True)]


def test_overload_is_refused_not_queued_forever():
    async def main():
        batcher = Batcher(Recorder(seconds=0.2), max_batch_size=1, max_latency_ms=100, seconds_per_clip=0.2)
        results = await asyncio.gather(*(batcher(item(1.0)) for _ in range(6)), return_exceptions=True)
        batcher.close()
        return results

    results = run(main())
    assert any(isinstance(r, OverloadedError) for r in results)
    assert any(isinstance(r, np.ndarray) for r in results)


def test_a_burst_after_timelines_is_not_refused():
    """A timeline's chunk of 16 windows is one queued request. Fitted per request, a few of them
    taught the batcher that every request costs 16 clips, and a burst of 64 single clips after
    them was judged to need seconds and refused; fitted per clip, the burst's estimate is what it
    costs (64 x 8 ms here), well inside the budget."""
    async def main():
        batcher = Batcher(Recorder(seconds=0.001, per_clip=0.008), max_batch_size=16, max_latency_ms=3000,
                          seconds_per_clip=0.008)
        for _ in range(16):  # one at a time, past BentoML's warm-up: each chunk a forward pass of its own
            await batcher(item(1.0, n=16))
        results = await asyncio.gather(*(batcher(item(float(i))) for i in range(64)), return_exceptions=True)
        batcher.close()
        return results

    results = run(main())
    assert [type(r).__name__ for r in results] == ["ndarray"] * 64
    assert [r.tolist() for r in results] == [[[8.0 * i]] for i in range(64)]


def test_a_request_that_would_wait_too_long_is_refused_at_once():
    """Refused by its own expected wait, while the engine is still busy: not after waiting out the
    budget, and not the requests ahead of it that will make it."""
    async def main():
        forward = Recorder(seconds=0.001)
        forward.release.clear()
        # 1 s a clip and 1 s a batch, as the start-up measured it: the held pass ends in 2 s, and
        # the k-th queued request (one clip a batch) in 2 + 2k s: within 9 s for k <= 3.
        batcher = Batcher(forward, max_batch_size=1, max_latency_ms=9_000, seconds_per_clip=1.0)
        first = asyncio.ensure_future(batcher(item(0.0)))
        await until(forward.entered.is_set)
        queued = [asyncio.ensure_future(batcher(item(float(i)))) for i in range(1, 8)]
        await until(lambda: sum(q.done() for q in queued) == 4)  # refused while the engine is held
        refused = [i for i, q in enumerate(queued, 1) if q.done()]
        forward.release.set()
        answered = await asyncio.gather(first, *queued[:3])
        errors = [type(q.exception()).__name__ for q in queued[3:]]
        batcher.close()
        return refused, [a.tolist() for a in answered], errors

    refused, answered, errors = run(main())
    assert refused == [4, 5, 6, 7]
    assert answered == [[[8.0 * i]] for i in range(4)]
    assert errors == ["OverloadedError"] * 4


def test_a_failed_forward_pass_raises_in_every_caller():
    def broken(batch, wide):
        raise RuntimeError("engine failed")

    async def caller(batcher):
        with pytest.raises(RuntimeError, match="engine failed"):
            await batcher(item(1.0))

    async def main():
        batcher = Batcher(broken, max_batch_size=8, max_latency_ms=5000)
        await asyncio.gather(*(caller(batcher) for _ in range(3)))
        batcher.close()

    run(main())


def test_preparer_counts_work_in_progress_and_waiting():
    async def main():
        workers = ThreadPoolExecutor(1)
        prepare = Preparer(workers, 1)
        gate = threading.Event()
        seen = []
        jobs = [asyncio.ensure_future(prepare(gate.wait, 30)) for _ in range(3)]
        await until(lambda: prepare.active == 3)  # one running, two waiting for the thread
        seen.append((prepare.active, prepare.busy()))
        gate.set()
        await asyncio.gather(*jobs)
        seen.append((prepare.active, prepare.busy()))
        with pytest.raises(ZeroDivisionError):  # errors reach the caller, and the count recovers
            await prepare(lambda: 1 / 0)
        seen.append((prepare.active, prepare.busy()))
        workers.shutdown()
        return seen

    assert run(main()) == [(3, True), (0, False), (0, False)]


@pytest.mark.parametrize(("engine_threads", "workers", "expected"), [
    (2, 0, (2, 2, 1)),  # this machine: a process per core, one stream each, lone clips on both cores
    (1, 0, (1, 1, 1)),
    (16, 0, (4, 16, 4)),  # capped: each worker holds its own engines in memory
    (2, 1, (1, 2, 2)),  # one process running batches as two streams
    (8, 3, (3, 8, 2)),
])
def test_process_and_thread_layout(engine_threads, workers, expected):
    assert Settings(engine_threads=engine_threads, workers=workers).layout() == expected


def test_bentoml_dispatcher_is_what_the_adapter_expects():
    """serving/batching.py leans on BentoML internals; a BentoML upgrade that changes any of them
    must fail here, by name, rather than somewhere in a served request."""
    import inspect

    import attr
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, Job, Optimizer

    params = inspect.signature(CorkDispatcher.__init__).parameters
    for name in ("max_latency_in_ms", "max_batch_size", "fallback", "get_batch_size", "batch_dim"):
        assert name in params, f"CorkDispatcher.__init__ lost its '{name}' argument"
    assert "max_latency" in inspect.signature(Optimizer.__init__).parameters
    assert callable(getattr(Optimizer, "trigger_refresh", None)), "Optimizer.trigger_refresh is gone"

    assert list(inspect.signature(Optimizer.log_outbound).parameters) == ["self", "n", "wait", "duration"]
    assert list(inspect.signature(CorkDispatcher.outbound_call).parameters)[:3] == ["self", "inputs_info", "training"]
    assert {"enqueue_time", "data", "future"} <= {f.name for f in attr.fields(Job)}
    dispatcher = CorkDispatcher(max_latency_in_ms=100, max_batch_size=4, fallback=lambda: None,
                                get_batch_size=len, batch_dim=(0, 0))
    # What _ClipDispatcher.controller uses in place of BentoML's own controller.
    for name in ("optimizer", "_queue", "shutdown", "controller", "_wake_event", "_sema", "_get_inputs",
                 "_loop", "max_latency", "max_batch_size", "get_batch_size"):
        assert hasattr(CorkDispatcher, name) or name in vars(dispatcher), f"CorkDispatcher has no '{name}' any more"
    assert callable(dispatcher._sema.is_locked) and callable(dispatcher._sema.acquire)
    for name in ("o_a", "o_b", "o_stat"):
        assert hasattr(dispatcher.optimizer, name), f"Optimizer has no '{name}' any more"
    assert len(dispatcher._queue) == 0  # read as "is anything queued" by the adapter


def test_a_few_stalled_passes_do_not_bend_the_latency_model():
    """Passes that waited for the engine's threads behind a large upload's decoding (a lone clip
    taking 2 s) must not turn the model into "nothing a clip, seconds a pass", which refused every
    request queued behind a pass (make bench's hostile burst)."""
    from serving.batching import _ClipLatency

    model = _ClipLatency(max_latency=5.0, seconds_per_clip=0.001)
    rng = np.random.default_rng(0)
    for i in range(60):
        clips = int(rng.integers(1, 17))
        duration = 0.001 * clips + 0.002
        if i % 6 == 0:  # one pass in six stalled, a lone clip held up for two seconds
            clips, duration = 1, 2.0
        model.clips = clips
        model.log_outbound(1, wait=0.0, duration=duration)
        model.trigger_refresh()
    assert model.o_a >= 0.001  # never below the engine's own time for a clip
    assert model.seconds(16, 1) < 0.1  # a full batch's estimate stays near its 18 ms, not seconds
