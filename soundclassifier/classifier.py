"""The one core every front door (HTTP, gRPC, page, Spark) calls: prepare clips, run batches, report.

    prepare(bytes)  -> (Audio, features)        decode + validate + log-mel, per clip
    forward(batch)  -> probabilities            one engine call for a stacked batch
    classification(...) / timeline(...)         typed results

Front doors own only transport: turning uploads into bytes and results into responses. Batching
across requests is the service's business (BentoML's adaptive batcher calls `forward`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from soundclassifier.audio import NO_LIMITS, Audio, Limits, decode
from soundclassifier.engine import Engine, TorchEngine
from soundclassifier.predictions import (
    Classification,
    Timeline,
    TimelineWindow,
    merge_spans,
    softmax,
    top_k,
)
from soundclassifier.store import LoadedModel
from soundclassifier.timeline import Stream, Window, stream_windows


class Classifier:
    def __init__(self, model: LoadedModel, engine: Engine | None = None):
        self.model = model
        self.engine = engine or TorchEngine(model.network)
        self.features = model.features
        self.settings = model.features.settings
        self.labels = model.labels
        self.tag = model.tag

    def prepare(
        self, source: bytes | str | Path, limits: Limits = NO_LIMITS
    ) -> tuple[Audio, np.ndarray]:
        """Decode one upload and compute its model input (1, n_mels, frames); raises AudioError."""
        audio = decode(source, limits)
        return audio, self.features(audio).numpy()

    def forward(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        """Probabilities (n, n_classes) for a stacked batch (n, 1, n_mels, frames); `wide`: one
        engine call on all its threads (nothing else needs the cores now), else shared streams."""
        return softmax(self.engine(batch, wide=wide)).astype(np.float32)

    def classification(self, audio: Audio, probs: np.ndarray, k: int) -> Classification:
        return Classification(
            model=self.tag,
            duration_s=round(audio.duration, 4),
            sample_rate=audio.sample_rate,
            top=top_k(probs, self.labels, k),
        )

    def classify(self, source: bytes | str | Path, k: int = 5, limits: Limits = NO_LIMITS) -> Classification:
        """Unbatched convenience for scripts and tests: one clip, one forward pass."""
        audio, x = self.prepare(source, limits)
        return self.classification(audio, self.forward(x[None])[0], k)

    def start_timeline(
        self, source: bytes | str | Path, hop_seconds: float | None = None, limits: Limits = NO_LIMITS
    ) -> TimelineJob:
        """Open a long recording for window-by-window classification (see `TimelineJob`)."""
        hop = self.settings.clip_seconds / 2 if hop_seconds is None else hop_seconds
        return TimelineJob(self, stream_windows(source, self.settings, hop, limits), hop)

    def timeline(
        self,
        source: bytes | str | Path,
        *,
        hop_seconds: float | None = None,
        k: int = 3,
        limits: Limits = NO_LIMITS,
    ) -> Timeline:
        """Unbatched convenience: the whole timeline with this process's engine."""
        job = self.start_timeline(source, hop_seconds, limits)
        for windows, inputs in job.chunks():
            job.add(windows, self.forward(inputs), k)
        return job.result()


class TimelineJob:
    """A timeline in progress: pull `chunks()` of windows with their model inputs, push
    probabilities back with `add`, then take `result()`. Callers choose how to run the forward
    passes (directly, or through the service's batcher); memory holds one chunk at a time."""

    def __init__(self, classifier: Classifier, stream: Stream, hop_s: float, chunk: int = 16):
        self.classifier, self.stream, self.hop_s, self.chunk = classifier, stream, hop_s, chunk
        self.windows: list[TimelineWindow] = []

    def chunks(self) -> Iterator[tuple[list[Window], np.ndarray]]:
        features = self.classifier.features
        for group in _chunks(self.stream.windows, self.chunk):
            yield group, np.stack([features(w.audio).numpy() for w in group])

    def add(self, windows: list[Window], probs: np.ndarray, k: int) -> None:
        labels = self.classifier.labels
        self.windows += [
            TimelineWindow(start_s=round(w.start_s, 4), end_s=round(w.end_s, 4), top=top_k(p, labels, k))
            for w, p in zip(windows, probs, strict=True)
        ]

    def result(self) -> Timeline:
        return Timeline(
            model=self.classifier.tag,
            duration_s=round(self.stream.duration_s, 4),
            sample_rate=self.stream.sample_rate,
            window_s=self.classifier.settings.clip_seconds,
            hop_s=self.hop_s,
            windows=self.windows,
            summary=merge_spans(self.windows),
        )


def _chunks(items: Iterator, n: int) -> Iterator[list]:
    group: list = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group
