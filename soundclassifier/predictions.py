"""Typed results shared by every front door, and the arithmetic that produces them."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class LabelScore(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


UNKNOWN = "unknown"
"""The label answered when a clip fails the model's `UnknownRule` (or the caller's `min_confidence`)."""


class Classification(BaseModel):
    model: str = Field(description="tag of the model that answered, e.g. sound-resnet:abc123")
    duration_s: float = Field(description="length of the uploaded audio in seconds")
    sample_rate: int = Field(description="sample rate of the uploaded audio in Hz")
    label: str = Field(description=f'the top label, or "{UNKNOWN}" when the clip is unlike the model\'s classes '
                       "(its stored rule, /info unknown_rule) or its top probability is below the request\'s min_confidence")
    top: list[LabelScore] = Field(description="most probable labels, best first")


class TimelineWindow(BaseModel):
    start_s: float
    end_s: float
    label: str = Field(description=f'the top label, or "{UNKNOWN}" (as in Classification)')
    top: list[LabelScore]


class BatchItem(BaseModel):
    filename: str
    result: Classification | None = None
    error: str | None = Field(None, description="kind of problem, when this file failed")
    detail: str | None = Field(None, description="what is wrong with this file")


class LabelSpan(BaseModel):
    label: str
    start_s: float
    end_s: float


class Timeline(BaseModel):
    model: str
    duration_s: float
    sample_rate: int
    window_s: float
    hop_s: float
    windows: list[TimelineWindow]
    summary: list[LabelSpan] = Field(
        description="consecutive windows whose top label is the same, merged into spans"
    )


class UnknownRule(BaseModel):
    """When the answer is "unknown": the clip's `score` below `threshold` (or not a number).

    score "familiarity": `familiarity` of the calibrated logits, the rule training stores
          (calibration.familiarity_threshold, fitted on held-out clips: training/calibrate.py);
    score "probability": the top calibrated probability: models stored before familiarity
          (calibration.threshold), and any request that gives min_confidence."""

    model_config = ConfigDict(frozen=True)
    score: Literal["familiarity", "probability"] = Field("probability", description="what the threshold applies to")
    threshold: float = Field(0.0, description='a clip whose score is below this is "unknown"')

    @classmethod
    def stored(cls, calibration: dict) -> UnknownRule:
        """The rule in a model's `calibration` metadata (none stored: never "unknown"). The
        familiarity threshold has a key of its own, so code that knows only `threshold` (a
        probability) finds none in a newer model rather than misreading it."""
        if "familiarity_threshold" in calibration:
            return cls(score="familiarity", threshold=float(calibration["familiarity_threshold"]))
        return cls(score="probability", threshold=float(calibration.get("threshold", 0.0)))

    def unknown(self, top_probability: np.ndarray | float, familiarity: np.ndarray | float) -> np.ndarray:
        score = np.asarray(familiarity if self.score == "familiarity" else top_probability)
        return ~(score >= self.threshold)  # NaN is "unknown" too

    def unknown_mask(self, scaled_logits: np.ndarray) -> np.ndarray:
        """True for each row of logits / temperature that is answered "unknown"."""
        return self.unknown(softmax(scaled_logits).max(axis=-1), familiarity(scaled_logits))


class ModelInfo(BaseModel):
    model: str
    labels: list[str]
    feature_settings: dict
    metrics: dict
    dataset: str
    engine: str
    precision: str
    engines_tried: dict
    calibration: dict = Field(description="temperature and calibration error measured on held-out clips, if any")
    min_confidence: float = Field(description="the top-probability threshold used when a request gives no "
                                  "min_confidence (0 when the model's rule is on familiarity: unknown_rule)")
    unknown_rule: UnknownRule = Field(description='when the model answers "unknown" to a request that gives no min_confidence')
    max_batch_size: int
    max_latency_ms: int
    threads: dict[str, int] = Field(
        description="per worker process: engine threads for a lone clip, single-threaded streams under load, "
        "threads of the feature step (the streams' own); and the number of worker processes"
    )
    limits: dict


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature in float64, so probabilities sum to 1 within float
    precision."""
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    """The k most probable labels of one clip, best first (ties broken by label order)."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(labels)))]
    return [LabelScore(label=labels[i], probability=float(probs[i])) for i in order]


def familiarity(scaled_logits: np.ndarray) -> np.ndarray:
    """log-sum-exp of each row of logits / temperature: how strongly a clip drives the classes at
    all, whichever of them wins (minus the free energy over T of Liu et al. 2020, "Energy-based
    Out-of-distribution Detection"). The top probability only says how far the best class beats
    the others, and a sound of none of them often drives one a little less weakly than the rest;
    by grouped cross-validation of the default recipe, at the same in-set accuracy, 0.72 of
    held-out recordings of other sounds fell below a familiarity threshold against 0.59 below a
    probability one (docs/training-recipe.md)."""
    z = np.asarray(scaled_logits, np.float64)
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[..., None]).sum(axis=-1))


def label_of(top: list[LabelScore], familiarity: float, rule: UnknownRule) -> str:
    return UNKNOWN if rule.unknown(top[0].probability, familiarity) else top[0].label


def merge_spans(windows: list[TimelineWindow]) -> list[LabelSpan]:
    spans: list[LabelSpan] = []
    for w in windows:
        label = w.label
        if spans and spans[-1].label == label and w.start_s <= spans[-1].end_s:
            spans[-1].end_s = max(spans[-1].end_s, w.end_s)
        else:
            spans.append(LabelSpan(label=label, start_s=w.start_s, end_s=w.end_s))
    return spans
