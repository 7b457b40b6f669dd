"""How the core's errors become answers: one table per transport, nothing else decides a status.

    AudioError(kind)    the upload is not usable audio, or over a limit (see ErrorKind)
    InvalidArgumentError  an argument out of its bounds (soundclassifier.options)
    LimitExceededError    a request over a budget (files per batch)
    OverloadedError     the queue is longer than the latency budget: retry later
    IdleError           a live stream sent no audio for too long

HTTP answers `{"error": kind, "detail": message}` with the status below (503 with Retry-After);
gRPC aborts with the code below and "kind: message"; a WebSocket sends the same JSON as a text
message, then closes with the code below and "kind: message" as the reason (cut to the 123 bytes
a close frame allows).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from starlette.responses import JSONResponse

from soundclassifier.errors import (
    AudioError,
    ErrorKind,
    IdleError,
    InvalidArgumentError,
    LimitExceededError,
    OverloadedError,
)

RETRY_AFTER_S = 1
CLIENT_ERRORS = (AudioError, InvalidArgumentError, OverloadedError)
STREAM_ERRORS = (*CLIENT_ERRORS, IdleError)  # a live stream's, besides the requests'

HTTP_STATUS = {
    ErrorKind.EMPTY: 400,
    ErrorKind.NOT_AUDIO: 415,
    ErrorKind.CORRUPT: 400,
    ErrorKind.UNSUPPORTED: 415,
    ErrorKind.TOO_LONG: 413,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.NON_FINITE: 422,
}
GRPC_STATUS = {
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TOO_LONG: grpc.StatusCode.OUT_OF_RANGE,
}  # every other kind: INVALID_ARGUMENT

# WebSocket close codes (RFC 6455 section 7.4.1).
WS_POLICY, WS_UNSUPPORTED_DATA, WS_TOO_BIG, WS_TRY_AGAIN_LATER = 1008, 1003, 1009, 1013
MAX_CLOSE_REASON_BYTES = 123


def _kind(e: Exception) -> str:
    if isinstance(e, AudioError):
        return e.kind.value
    if isinstance(e, LimitExceededError):
        return "too_large"
    if isinstance(e, IdleError):
        return "idle"
    return "overloaded" if isinstance(e, OverloadedError) else "bad_request"


def error_body(e: Exception) -> dict[str, str]:
    return {"error": _kind(e), "detail": str(e)}


def http_error(e: Exception) -> JSONResponse:
    body = error_body(e)
    if isinstance(e, OverloadedError):
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, AudioError):
        return JSONResponse(body, status_code=HTTP_STATUS[e.kind])
    return JSONResponse(body, status_code=413 if isinstance(e, LimitExceededError) else 400)


def grpc_status(e: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, AudioError):
        code = GRPC_STATUS.get(e.kind, grpc.StatusCode.INVALID_ARGUMENT)
    elif isinstance(e, OverloadedError):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(e, LimitExceededError):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif isinstance(e, IdleError):
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    return code, f"{_kind(e)}: {e}"


def ws_close(e: Exception) -> tuple[int, str]:
    """(close code, reason) for a live stream ended by `e`: a frame too large 1009, a frame that is
    not 16-bit PCM 1003, overload 1013 (try again later), bad parameters, idleness and a stream over
    its length limit 1008."""
    if isinstance(e, AudioError) and e.kind == ErrorKind.TOO_LONG:
        code = WS_POLICY
    elif isinstance(e, AudioError):
        code = WS_TOO_BIG if e.kind == ErrorKind.TOO_LARGE else WS_UNSUPPORTED_DATA
    elif isinstance(e, OverloadedError):
        code = WS_TRY_AGAIN_LATER
    else:
        code = WS_POLICY
    reason = f"{_kind(e)}: {e}".encode()
    if len(reason) > MAX_CLOSE_REASON_BYTES:
        reason = reason[: MAX_CLOSE_REASON_BYTES - 3] + b"..."
    return code, reason.decode(errors="ignore")


T = TypeVar("T")


async def http_answer(call: Awaitable[T]) -> T | JSONResponse:
    """The pipeline's result, or the client error it raised as an HTTP answer."""
    try:
        return await call
    except CLIENT_ERRORS as e:
        return http_error(e)
