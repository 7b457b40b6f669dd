"""Prometheus metrics that matter for this service, exported on BentoML's own /metrics.

Created inside the worker (after BentoML has set PROMETHEUS_MULTIPROC_DIR); `PrometheusHooks` is
what the pipeline reports to (soundclassifier.pipeline.Hooks).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from soundclassifier.pipeline import Hooks


@dataclass(frozen=True)
class Metrics:
    batch_size: Histogram
    audio_seconds: Counter
    clips: Counter
    audio_errors: Counter
    overloaded: Counter
    engine: Gauge


def create_metrics(max_batch_size: int) -> Metrics:
    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < max_batch_size] + [max_batch_size]
    return Metrics(
        batch_size=Histogram(
            "sound_forward_batch_size", "Clips per forward pass of the network", buckets=buckets
        ),
        audio_seconds=Counter(
            "sound_audio_seconds", "Seconds of audio classified", ["endpoint"]
        ),
        clips=Counter("sound_clips", "Clips and timeline windows classified", ["endpoint"]),
        audio_errors=Counter(
            "sound_audio_errors", "Uploads refused, by kind of problem", ["kind"]
        ),
        overloaded=Counter("sound_overloaded", "Requests answered 503 because the queue was full"),
        engine=Gauge(
            "sound_engine_info", "Inference engine in use (value 1)", ["engine", "precision", "model"],
            multiprocess_mode="livemax",  # one sample per engine in use, however many worker processes
        ),
    )


class PrometheusHooks(Hooks):
    def __init__(self, max_batch_size: int):
        self.metrics = create_metrics(max_batch_size)

    def serving(self, engine: str, precision: str, model: str) -> None:
        self.metrics.engine.labels(engine, precision, model).set(1)

    def clips(self, endpoint: str, n: int, audio_seconds: float) -> None:
        if n:
            self.metrics.clips.labels(endpoint).inc(n)
        if audio_seconds:
            self.metrics.audio_seconds.labels(endpoint).inc(audio_seconds)

    def audio_error(self, kind: str) -> None:
        self.metrics.audio_errors.labels(kind).inc()

    def overloaded(self) -> None:
        self.metrics.overloaded.inc()

    def batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)
