"""How the core's errors become answers: one table per transport, nothing else decides a status.

    AudioError(kind)    the upload is not usable audio, or over a limit (see ErrorKind)
    InvalidArgumentError  an argument out of its bounds (soundclassifier.options)
    LimitExceededError    a request over a budget (files per batch)
    OverloadedError     the queue is longer than the latency budget: retry later

HTTP answers `{"error": kind, "detail": message}` with the status below (503 with Retry-After);
gRPC aborts with the code below and "kind: message".
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from starlette.responses import JSONResponse

from soundclassifier.audio import AudioError, ErrorKind
from soundclassifier.options import InvalidArgumentError, LimitExceededError
from soundclassifier.pipeline import OverloadedError

RETRY_AFTER_S = 1
CLIENT_ERRORS = (AudioError, InvalidArgumentError, OverloadedError)

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


def _kind(e: Exception) -> str:
    if isinstance(e, AudioError):
        return e.kind.value
    if isinstance(e, LimitExceededError):
        return "too_large"
    return "overloaded" if isinstance(e, OverloadedError) else "bad_request"


def http_error(e: Exception) -> JSONResponse:
    body = {"error": _kind(e), "detail": str(e)}
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
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    return code, f"{_kind(e)}: {e}"


T = TypeVar("T")


async def http_answer(call: Awaitable[T]) -> T | JSONResponse:
    """The pipeline's result, or the client error it raised as an HTTP answer."""
    try:
        return await call
    except CLIENT_ERRORS as e:
        return http_error(e)
