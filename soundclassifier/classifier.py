"""The synchronous core: one model and its engine, from bytes to typed results.

    prepare(bytes)  -> (AudioInfo, features)    decode + validate + log-mel, per clip
    forward(batch)  -> calibrated logits        one engine call for a stacked batch
    classification(...) / timeline(...)         typed results (probabilities, "unknown" by the model's rule)

`soundclassifier.pipeline.Pipeline` runs these steps for the service's front doors (threads,
shared batches, metrics); the Spark executor, scripts and benchmarks call them directly. Either
way the arguments are the ones in `soundclassifier.options`, checked by `classify_options` /
`timeline_options`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from soundclassifier.audio import NO_LIMITS, AudioInfo, BlockDecoder, Limits, Source
from soundclassifier.engine import Engine, TorchEngine
from soundclassifier.options import ClassifyOptions, ListenOptions, TimelineOptions, validate_options
from soundclassifier.predictions import (
    Classification,
    Timeline,
    TimelineWindow,
    UnknownRule,
    familiarity,
    label_of,
    merge_spans,
    softmax,
    top_k,
)
from soundclassifier.store import LoadedModel
from soundclassifier.timeline import Stream, stream_windows

Span = tuple[float, float]  # a window's (start_s, end_s)


class Classifier:
    def __init__(self, model: LoadedModel, engine: Engine | None = None):
        self.model = model
        self.engine = engine or TorchEngine(model.network)
        self.features = model.features
        self.settings = model.features.settings
        self.labels = model.labels
        self.tag = model.tag
        # Calibration measured on held-out clips at training time (absent on older models): the
        # logits' temperature, and the rule by which a clip is "unknown".
        calibration = model.metadata.get("calibration") or {}
        self.temperature = float(calibration.get("temperature", 1.0))
        self.rule = UnknownRule.stored(calibration)
        # /info's min_confidence: the probability threshold that applies when a request gives none.
        self.default_min_confidence = max(0.0, self.rule.threshold) if self.rule.score == "probability" else 0.0

    # --- arguments ------------------------------------------------------------------------------

    def classify_options(self, **values) -> ClassifyOptions:
        return validate_options(ClassifyOptions, values)

    def timeline_options(self, **values) -> TimelineOptions:
        return validate_options(TimelineOptions, values, window_s=self.settings.clip_seconds)

    def listen_options(self, **values) -> ListenOptions:
        return validate_options(ListenOptions, values, window_s=self.settings.clip_seconds)

    def unknown_rule(self, opts: ClassifyOptions) -> UnknownRule:
        """The model's rule, or the request's min_confidence on the top probability instead."""
        return self.rule if opts.min_confidence is None else UnknownRule(score="probability", threshold=opts.min_confidence)

    # --- steps ----------------------------------------------------------------------------------

    def prepare(
        self, source: Source, limits: Limits = NO_LIMITS
    ) -> tuple[AudioInfo, np.ndarray]:
        """Decode one upload and compute its model input (1, n_mels, frames); raises AudioError.
        Decoded a block at a time: memory holds one block and one window, not the clip."""
        clip = BlockDecoder(source, limits)
        x = self.features.from_blocks(clip, clip.sample_rate)
        return clip.info(), np.asarray(x)

    def forward(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        """Calibrated logits (logits / temperature; n, n_classes) for a stacked batch (n, 1,
        n_mels, frames); `wide`: one engine call on all its threads (nothing else needs the cores
        now), else shared streams. Their softmax is the probabilities a client sees."""
        return (np.asarray(self.engine(batch, wide=wide), np.float32) / np.float32(self.temperature))

    def classification(self, audio: AudioInfo, z: np.ndarray, opts: ClassifyOptions) -> Classification:
        """One clip's answer from its calibrated logits `z` (n_classes,)."""
        top = top_k(softmax(z), self.labels, opts.top_k)
        return Classification(
            model=self.tag,
            duration_s=round(audio.duration, 4),
            sample_rate=audio.sample_rate,
            label=label_of(top, float(familiarity(z)), self.unknown_rule(opts)),
            top=top,
        )

    def windows(self, spans: list[Span], z: np.ndarray, opts: TimelineOptions) -> list[TimelineWindow]:
        """Timeline windows (a recording's, or a live stream's) from their spans and calibrated logits."""
        rule = self.unknown_rule(opts)
        windows = []
        for (start, end), row in zip(spans, z, strict=True):
            top = top_k(softmax(row), self.labels, opts.top_k)
            windows.append(TimelineWindow(start_s=round(start, 4), end_s=round(end, 4),
                                          label=label_of(top, float(familiarity(row)), rule), top=top))
        return windows

    # --- unbatched conveniences (scripts, tests, the Spark executor) ----------------------------

    def classify(self, source: Source, limits: Limits = NO_LIMITS, **options) -> Classification:
        """One clip, one forward pass."""
        opts = self.classify_options(**options)
        audio, x = self.prepare(source, limits)
        return self.classification(audio, self.forward(x[None])[0], opts)

    def start_timeline(
        self, source: Source, opts: TimelineOptions, limits: Limits = NO_LIMITS
    ) -> TimelineJob:
        """Open a long recording for window-by-window classification (see `TimelineJob`)."""
        hop = self.settings.clip_seconds / 2 if opts.hop_s is None else opts.hop_s
        return TimelineJob(self, stream_windows(source, self.settings, hop, limits), hop, opts)

    def timeline(self, source: Source, limits: Limits = NO_LIMITS, **options) -> Timeline:
        """The whole timeline with this process's engine."""
        job = self.start_timeline(source, self.timeline_options(**options), limits)
        for windows, inputs in job.chunks():
            job.add(windows, self.forward(inputs))
        return job.result()


class TimelineJob:
    """A timeline in progress: pull `chunks()` of windows with their model inputs, push
    their calibrated logits back with `add`, then take `result()`. Callers choose how to run the forward
    passes (directly, or through the service's batcher); memory holds one chunk at a time."""

    def __init__(self, classifier: Classifier, stream: Stream, hop_s: float, opts: TimelineOptions,
                 chunk: int = 16):
        self.classifier, self.stream, self.hop_s, self.opts, self.chunk = classifier, stream, hop_s, opts, chunk
        self.windows: list[TimelineWindow] = []

    def chunks(self) -> Iterator[tuple[list[Span], np.ndarray]]:
        """(spans, model inputs) of up to `chunk` windows; a window's samples are dropped as soon
        as its features are computed, so memory holds one window of audio at a time."""
        features = self.classifier.features
        spans: list[Span] = []
        inputs: list[np.ndarray] = []
        for w in self.stream.windows:
            spans.append((w.start_s, w.end_s))
            inputs.append(np.asarray(features(w.audio)))
            if len(spans) == self.chunk:
                yield spans, np.stack(inputs)
                spans, inputs = [], []
        if spans:
            yield spans, np.stack(inputs)

    def add(self, spans: list[Span], z: np.ndarray) -> None:
        self.windows.extend(self.classifier.windows(spans, z, self.opts))

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
