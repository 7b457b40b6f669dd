"""The core's exceptions, in one place: what the request path raises, and what front doors map
to their own answers (serving/errors.py: HTTP status, gRPC code, WebSocket close code).

Each carries a message a client can act on: it names the argument, the limit or the reason.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """Why an upload cannot be classified (the `error` field of a 4xx answer)."""

    EMPTY = "empty"
    NOT_AUDIO = "not_audio"
    CORRUPT = "corrupt"
    UNSUPPORTED = "unsupported"
    TOO_LONG = "too_long"
    TOO_LARGE = "too_large"
    NON_FINITE = "non_finite"


class AudioError(ValueError):
    """An upload or file that cannot be classified, with a reason a user understands."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.kind.value, "detail": self.message}


class InvalidArgumentError(ValueError):
    """A request argument out of its bounds; the message names the argument and the bounds."""


class LimitExceededError(InvalidArgumentError):
    """A request larger than a budget allows (files per batch); the message names the limit."""


class OverloadedError(Exception):
    """The queue is longer than the latency budget allows; retry later."""


class IdleError(Exception):
    """A live stream sent no audio for longer than the idle limit; it is closed."""


class NoEngineError(RuntimeError):
    """No inference engine can be imported in this process."""
