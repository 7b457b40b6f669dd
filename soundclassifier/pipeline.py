"""One model's request path, owned here and only here; every front door is an adapter over it.

    pipeline = open_pipeline(Settings())                         # load model, pick engine, once
    await pipeline.classify(data, top_k=3)                       # -> Classification
    await pipeline.classify_files([(name, data), ...])           # -> list[BatchItem]
    await pipeline.timeline(path_or_bytes, hop_s=2.5)            # -> Timeline
    with pipeline.listen(sample_rate=16000) as session:          # a live stream (soundclassifier/listen.py)
        async for message in session.run(frames): ...
    await pipeline.spectrogram(data)                             # -> PNG bytes
    pipeline.describe()                                          # -> ModelInfo (what /info says)

Every argument a client may send (top_k, min_confidence, hop_s) is declared once, in
`ClassifyOptions` / `TimelineOptions`, with its bounds and default; a bad value raises
`InvalidArgumentError` before any work. Request-path errors are core exceptions (`AudioError`,
`InvalidArgumentError`, `OverloadedError`): front doors map them to their own status codes
(serving/errors.py) and never re-check a rule.

Async calls share the engine through a batcher (`Batcher` protocol): the service plugs in BentoML's
adaptive batcher (serving/batching.py); without one, each call runs its own forward pass. Decoding
and features run on the engine's own stream threads (`Preparer`), so busy threads never outnumber
the cores. Synchronous callers (the Spark executor, scripts, the LitServe peer) use `classifier`,
the same decoding, features, forward pass and results without the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import bentoml
import numpy as np

from soundclassifier.audio import Source
from soundclassifier.classifier import Classifier
from soundclassifier.config import Settings
from soundclassifier.errors import AudioError, LimitExceededError, OverloadedError
from soundclassifier.listen import ListenSession
from soundclassifier.loading import open_classifier
from soundclassifier.options import ClassifyOptions
from soundclassifier.predictions import BatchItem, Classification, ModelInfo, Timeline
from soundclassifier.render import spectrogram_png

log = logging.getLogger(__name__)


class Batcher(Protocol):
    """Runs forward passes for queued inputs, possibly several requests' at once."""

    async def __call__(self, inputs: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


BatcherFactory = Callable[..., Batcher]
"""`factory(forward, *, others_busy, seconds_per_clip, on_batch) -> Batcher`; `forward(batch, wide)`."""


class Hooks:
    """What the pipeline reports as it works (the service counts it in Prometheus metrics)."""

    def serving(self, engine: str, precision: str, model: str) -> None: ...
    def clips(self, endpoint: str, n: int, audio_seconds: float) -> None: ...
    def audio_error(self, kind: str) -> None: ...
    def overloaded(self) -> None: ...
    def batch(self, size: int) -> None: ...


T = TypeVar("T")


class Preparer:
    """Runs the request path's CPU work (decode, features) on `executor` (the engine's workers)
    and counts the calls in progress or waiting, so the batcher knows whether the engine may take
    every core."""

    def __init__(self, executor: ThreadPoolExecutor, threads: int):
        self.threads = threads  # the executor's, for /info
        self.active = 0
        self._executor = executor

    async def __call__(self, fn: Callable[..., T], *args) -> T:
        self.active += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        finally:
            self.active -= 1

    def busy(self) -> bool:
        return self.active > 0


class _Unbatched:
    """Each call its own forward pass, on one thread: for callers without a batcher."""

    def __init__(self, forward: Callable[[np.ndarray, bool], np.ndarray], **_):
        self._forward = forward
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="forward")

    async def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, inputs, True)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Pipeline:
    def __init__(
        self,
        classifier: Classifier,
        settings: Settings,
        engine_report: dict,
        *,
        make_batcher: BatcherFactory = _Unbatched,
        hooks: Hooks | None = None,
    ):
        self.classifier = classifier
        self.settings = settings
        self.engine_report = engine_report
        self.hooks = hooks or Hooks()
        engine = classifier.engine
        self.hooks.serving(engine.name, engine.precision, classifier.tag)
        # The engine meets every batch shape once, beside the first requests rather than before
        # the worker is ready: at start it cost 2 s of readiness on 2 workers (3.4 -> 5.6 s).
        self._warming = threading.Thread(target=self._warm, name="engine-warm", daemon=True)
        self._warming.start()
        self.prepare = Preparer(engine.workers, engine.streams)
        self.in_flight = 0  # requests admitted and not yet answered (one event loop: no lock)
        self.streams = 0  # live streams open
        self.batcher = make_batcher(
            classifier.forward,
            others_busy=self.prepare.busy,
            seconds_per_clip=1 / engine_report["clips_per_second"],
            on_batch=self.hooks.batch,
        )

    # --- requests -------------------------------------------------------------------------------

    async def classify(self, source: Source, *, endpoint: str = "classify", **options) -> Classification:
        """One clip: decode + features on an engine thread, a shared forward pass, the result."""
        opts = self.classifier.classify_options(**options)
        with self._admitted():
            return await self._classify(source, opts, endpoint)

    async def classify_files(self, files: list[tuple[str, Source]], **options) -> list[BatchItem]:
        """Several files; a file that is not usable audio fails only its own entry."""
        opts = self.classifier.classify_options(**options)
        if len(files) > self.settings.max_batch_files:
            raise LimitExceededError(
                f"audio: {len(files)} files; the limit is {self.settings.max_batch_files} files per request")

        async def one(name: str, data: Source) -> BatchItem:
            try:
                result = await self._classify(data, opts, "classify_batch")
            except AudioError as e:
                return BatchItem(filename=name, error=e.kind.value, detail=e.message)
            return BatchItem(filename=name, result=result)

        with self._admitted():
            items = await asyncio.gather(*(one(n, d) for n, d in files), return_exceptions=True)
        for item in items:  # overload (or a bug) fails the whole request: the first one is raised
            if isinstance(item, BaseException):
                raise item
        return items

    async def timeline(self, source: Source, *, endpoint: str = "timeline", **options) -> Timeline:
        """A long recording in sliding windows of the model's length; memory holds one chunk."""
        clf = self.classifier
        opts = clf.timeline_options(**options)
        with self._admitted():
            job = await self._decode(clf.start_timeline, source, opts, self.settings.timeline_limits)
            chunks = job.chunks()
            while (item := await self._decode(next, chunks, None)) is not None:
                spans, inputs = item
                job.add(spans, await self._forward(inputs))
                self.hooks.clips(endpoint, len(spans), 0.0)
            self.hooks.clips(endpoint, 0, job.stream.duration_s)
            return job.result()

    async def spectrogram(self, source: Source) -> bytes:
        """PNG of the log-mel spectrogram exactly as the model sees it."""
        with self._admitted():
            audio, x = await self._decode(self.classifier.prepare, source, self.settings.clip_limits)
            return await self.prepare(spectrogram_png, x, self.classifier.settings, f"{audio.duration:.2f} s")

    def listen(self, **options) -> ListenSession:
        """A live stream (soundclassifier/listen.py), its options validated, or refused at once when
        the worker already serves SOUND_LISTEN_MAX_STREAMS: each holds a window of audio and asks
        for a forward pass per hop for as long as it lasts, so they are counted apart from requests."""
        opts = self.classifier.listen_options(**options)
        if self.streams >= self.settings.listen_max_streams:
            self.hooks.overloaded()
            raise OverloadedError(f"the server has {self.streams} live streams open; retry shortly")
        self.streams += 1

        def release() -> None:
            self.streams -= 1

        return ListenSession(self.classifier, self.settings, opts, release, prepare=self._decode,
                             forward=self._forward, count=functools.partial(self.hooks.clips, "listen"))

    def describe(self) -> ModelInfo:
        """Which model answers and how: what /info and gRPC Info return, and the page shows."""
        clf, s = self.classifier, self.settings
        meta = clf.model.metadata
        workers, _, _ = s.layout()
        return ModelInfo(
            model=clf.tag,
            labels=clf.labels,
            feature_settings=clf.settings.model_dump(),
            metrics={**meta.get("metrics", {}), "per_class_recall": meta.get("per_class_recall", {})},
            dataset=str(meta.get("dataset", "")),
            engine=clf.engine.name,
            precision=clf.engine.precision,
            engines_tried=self.engine_report.get("tried", {}),
            calibration=meta.get("calibration", {}),
            min_confidence=clf.default_min_confidence,
            unknown_rule=clf.rule,
            max_batch_size=s.max_batch_size,
            max_latency_ms=s.max_latency_ms,
            threads={"engine": clf.engine.threads, "streams": clf.engine.streams,
                     "features": self.prepare.threads, "workers": workers},
            limits=s.model_dump(include={"max_upload_mb", "max_clip_seconds", "max_timeline_upload_mb",
                                         "max_timeline_seconds"}),
        )

    def close(self) -> None:
        self.batcher.close()

    def warmed(self, timeout_s: float | None = None) -> bool:
        """Has the engine met every batch shape it can be handed (waiting up to `timeout_s`)?"""
        self._warming.join(timeout_s)
        return not self._warming.is_alive()

    def _warm(self) -> None:
        # The batcher hands the engine at most max_batch_size clips a pass (a timeline chunk is split).
        started = time.perf_counter()
        shapes = self.classifier.engine.warm(self.classifier.model.samples, self.settings.max_batch_size)
        log.info("engine warmed for %d batch shapes in %.2f s", shapes, time.perf_counter() - started)

    # --- the steps ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admitted(self):
        """Admit one more request, or refuse it at once (503 + Retry-After): decoding and the
        queue ahead of the batcher hold memory and time per waiting request, so their number is
        bounded (SOUND_MAX_REQUESTS_IN_FLIGHT per worker), on every route and gRPC method."""
        if self.in_flight >= self.settings.max_requests_in_flight:
            self.hooks.overloaded()
            raise OverloadedError(f"the server has {self.in_flight} requests in progress; retry shortly")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _classify(self, source: Source, opts: ClassifyOptions, endpoint: str) -> Classification:
        audio, x = await self._decode(self.classifier.prepare, source, self.settings.clip_limits)
        z = await self._forward(x[None])
        self.hooks.clips(endpoint, 1, audio.duration)
        return self.classifier.classification(audio, z[0], opts)

    async def _decode(self, fn: Callable[..., T], *args) -> T:
        try:
            return await self.prepare(fn, *args)
        except AudioError as e:
            self.hooks.audio_error(e.kind.value)
            raise

    async def _forward(self, inputs: np.ndarray) -> np.ndarray:
        try:
            return await self.batcher(inputs)
        except OverloadedError:
            self.hooks.overloaded()
            raise


def open_pipeline(
    settings: Settings,
    model: str | bentoml.Model | None = None,
    *,
    make_batcher: BatcherFactory = _Unbatched,
    hooks: Hooks | None = None,
) -> Pipeline:
    """The pipeline for `model` (default: `settings.model_tag`) laid out as `settings` says."""
    _, threads, streams = settings.layout()
    classifier, report = open_classifier(model or settings.model_tag, settings.engine, threads, streams,
                                         settings.precision)
    return Pipeline(classifier, settings, report, make_batcher=make_batcher, hooks=hooks)
