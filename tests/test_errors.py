"""How the core's errors become HTTP and gRPC answers (serving/errors.py): one table per transport."""

from __future__ import annotations

import json

import grpc
import pytest

from serving.errors import grpc_status, http_error
from soundclassifier.errors import AudioError, ErrorKind, InvalidArgumentError, OverloadedError


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        (ErrorKind.TOO_LONG, 413, grpc.StatusCode.OUT_OF_RANGE),
        (ErrorKind.TOO_LARGE, 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ErrorKind.NON_FINITE, 422, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.EMPTY, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.CORRUPT, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.NOT_AUDIO, 415, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.UNSUPPORTED, 415, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_audio_errors(kind, status, code):
    answer = http_error(AudioError(kind, "what is wrong"))
    assert answer.status_code == status
    assert json.loads(answer.body) == {"error": kind.value, "detail": "what is wrong"}
    assert grpc_status(AudioError(kind, "what is wrong")) == (code, f"{kind.value}: what is wrong")


def test_a_bad_argument_is_400_and_invalid_argument():
    e = InvalidArgumentError("top_k: Input should be less than or equal to 50")
    answer = http_error(e)
    assert answer.status_code == 400
    assert json.loads(answer.body) == {"error": "bad_request", "detail": str(e)}
    assert grpc_status(e) == (grpc.StatusCode.INVALID_ARGUMENT, f"bad_request: {e}")


def test_overload_is_503_with_retry_after_and_unavailable():
    e = OverloadedError("the server is busy; retry shortly")
    answer = http_error(e)
    assert answer.status_code == 503 and answer.headers["retry-after"].isdigit()
    assert json.loads(answer.body)["error"] == "overloaded"
    assert grpc_status(e)[0] == grpc.StatusCode.UNAVAILABLE
