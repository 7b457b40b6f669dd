"""Typed results shared by every front door, and the arithmetic that produces them."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field


class LabelScore(BaseModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class Classification(BaseModel):
    model: str = Field(description="tag of the model that answered, e.g. sound-resnet:abc123")
    duration_s: float = Field(description="length of the uploaded audio in seconds")
    sample_rate: int = Field(description="sample rate of the uploaded audio in Hz")
    top: list[LabelScore] = Field(description="most probable labels, best first")


class TimelineWindow(BaseModel):
    start_s: float
    end_s: float
    top: list[LabelScore]


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so probabilities sum to 1 within float precision."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    """The k most probable labels of one clip, best first (ties broken by label order)."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(labels)))]
    return [LabelScore(label=labels[i], probability=float(probs[i])) for i in order]


def merge_spans(windows: list[TimelineWindow]) -> list[LabelSpan]:
    spans: list[LabelSpan] = []
    for w in windows:
        label = w.top[0].label
        if spans and spans[-1].label == label and w.start_s <= spans[-1].end_s:
            spans[-1].end_s = max(spans[-1].end_s, w.end_s)
        else:
            spans.append(LabelSpan(label=label, start_s=w.start_s, end_s=w.end_s))
    return spans
