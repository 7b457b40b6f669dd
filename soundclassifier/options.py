"""The arguments a client may send, each declared once with its bounds and default.

Every front door (HTTP routes, gRPC, the page, the Spark job's options) builds these through
`validate_options` (or `Classifier.classify_options` / `timeline_options`, which add the model's
window as the hop's upper bound); a bad value is an `InvalidArgumentError` naming the argument and its
bounds, raised before any work.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from soundclassifier.errors import InvalidArgumentError
from soundclassifier.timeline import MIN_HOP_S

MAX_TOP_K = 50
DEFAULT_TOP_K = 5
DEFAULT_TIMELINE_TOP_K = 3
MIN_LISTEN_RATE, MAX_LISTEN_RATE = 8_000, 48_000
DEFAULT_LISTEN_HOP_S = 0.5
MAX_SMOOTHING = 25

TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K, description="how many labels to return")]
MinConfidence = Annotated[
    float,
    Field(ge=0.0, le=1.0, description='answer "unknown" when the top probability is below this, instead of '
          "the model's own rule (default: that rule, stored with the model: unknown when a clip is unlike its classes)"),
]
HopS = Annotated[
    float,
    Field(ge=MIN_HOP_S, description="seconds between window starts, at most one window (default: half a window)"),
]


class ClassifyOptions(BaseModel):
    """What a client may ask of /classify and /classify_batch (and their gRPC twins)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    top_k: TopK = DEFAULT_TOP_K
    min_confidence: MinConfidence | None = None


class TimelineOptions(ClassifyOptions):
    """What a client may ask of /timeline. The hop's upper bound is the model's window, known
    from the validation context (`window_s`): front doors that check arguments before the model
    is at hand (the upload guard, the Spark command line) check the rest, and the classifier
    checks again with the window."""

    top_k: TopK = DEFAULT_TIMELINE_TOP_K
    hop_s: HopS | None = None

    @field_validator("hop_s")
    @classmethod
    def _within_window(cls, hop: float | None, info: ValidationInfo) -> float | None:
        window = (info.context or {}).get("window_s")
        if hop is not None and window is not None and hop > window:
            raise ValueError(f"hop_s must be between {MIN_HOP_S:g} s and the window ({window:g} s)")
        return hop


class ListenOptions(TimelineOptions):
    """What a client may ask of a live stream (WebSocket /listen, gRPC Listen): the PCM it sends,
    and the timeline's arguments. `smoothing` N: events follow the per-class median of the
    probabilities, and the median familiarity, of N windows centred on each window (1: each
    window's own label)."""

    sample_rate: Annotated[
        int, Field(ge=MIN_LISTEN_RATE, le=MAX_LISTEN_RATE, description="Hz of the 16-bit mono PCM the client sends")
    ]
    hop_s: HopS = DEFAULT_LISTEN_HOP_S
    smoothing: Annotated[
        int, Field(ge=1, le=MAX_SMOOTHING, description="windows whose median probabilities (and familiarity) decide events (1 = none)")
    ] = 1


Options = TypeVar("Options", bound=ClassifyOptions)


def validate_options(kind: type[Options], values: dict, window_s: float | None = None) -> Options:
    """`kind` built from a front door's arguments (None means "not given"), or InvalidArgumentError."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return kind.model_validate(given, context={"window_s": window_s})
    except ValidationError as e:
        raise InvalidArgumentError(describe(e)) from None


def describe(error: ValidationError) -> str:
    """A pydantic error in a user's words: `field: message` per problem, joined by "; "."""
    return "; ".join(_describe(err) for err in error.errors())


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own words
    return f"{where}: {message}" if where else message
