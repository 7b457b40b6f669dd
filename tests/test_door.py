"""The upload door (serving/door.py) behind the upload guard, in this process, over a small real
BentoML service. The served tests (test_service.py) check the door inside the real service; these
check what it does with the guard's form on its own: which method answers, with what arguments, and
what a failing method's client gets."""

from __future__ import annotations

import bentoml
import pytest
from _bentoml_sdk.service import set_current_service
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from serving.door import UploadDoor
from serving.http_guard import UploadGuard, UploadRule
from serving.uploads import AudioUpload
from soundclassifier.options import ClassifyOptions

AUDIO = bytes(range(256)) * 100


@bentoml.service
class Echo:
    """Says what it was called with; a top_k of 13 is a bug."""

    def __init__(self) -> None:
        self.files = []

    @bentoml.api(route="/classify")
    async def classify(self, audio: AudioUpload, top_k: int = 3) -> dict:
        self.files.append(audio.file)
        if top_k == 13:
            raise RuntimeError("a bug in the route")
        return {"filename": audio.filename, "bytes": len(audio.file.read()), "top_k": top_k}


@pytest.fixture
def echo():
    instance = Echo()
    set_current_service(instance)
    behind = []

    async def bentoml_app(scope, receive, send) -> None:  # what the door hands on: BentoML's app
        behind.append(scope["path"])
        await PlainTextResponse("bentoml")(scope, receive, send)

    door = UploadGuard(UploadDoor(bentoml_app), rules={"/classify": UploadRule(1 << 20, ClassifyOptions)})
    yield TestClient(door, raise_server_exceptions=False), instance, behind
    set_current_service(None)


def test_the_door_calls_the_routes_method_with_the_guards_form(echo):
    client, instance, behind = echo
    r = client.post("/classify", files={"audio": ("clip.wav", AUDIO)}, data={"top_k": "5"})
    assert r.status_code == 200, r.text
    assert r.json() == {"filename": "clip.wav", "bytes": len(AUDIO), "top_k": 5}
    assert r.headers["server"] == "BentoML Service/Echo"
    assert behind == [] and instance.files[0].closed  # answered here; its upload closed once answered


def test_what_the_door_does_not_answer_goes_on_to_bentoml(echo):
    client, _, behind = echo
    assert client.get("/classify").text == "bentoml"
    assert client.post("/other", content=b"x").text == "bentoml"
    assert behind == ["/classify", "/other"]


def test_a_failing_method_is_bentomls_logged_500_and_its_upload_is_closed(echo, caplog):
    client, instance, _ = echo
    r = client.post("/classify", files={"audio": ("clip.wav", AUDIO)}, data={"top_k": "13"})
    assert r.status_code == 500
    assert r.json() == {"error": "An unexpected error has occurred, please check the server log."}
    assert "a bug in the route" in caplog.text
    assert instance.files[0].closed


def test_bentoml_internals_are_what_the_door_expects(echo):
    """serving/door.py leans on BentoML internals; a BentoML upgrade that changes any of them must
    fail here, by name, rather than as a 500 or a wrong answer in a served request."""
    import inspect

    from _bentoml_impl.serde import MultipartSerde
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import trace_context

    _, instance, _ = echo
    assert bentoml.get_current_service() is instance
    service = instance.bento_service
    assert service.name == "Echo" and "classify" in service.apis, "Service.apis / .name changed"
    method = service.apis["classify"]
    for name in ("route", "ctx_param", "batchable", "func", "input_spec", "output_spec"):
        assert hasattr(method, name), f"APIMethod has no '{name}' any more"
    assert callable(getattr(instance.classify, "local", None)), "a bound API method has no .local any more"
    assert list(inspect.signature(method.input_spec.from_http_request).parameters) == ["request", "serde"]
    assert list(inspect.signature(method.output_spec.to_http_response).parameters) == ["obj", "serde"]
    assert {"audio", "top_k"} <= set(method.input_spec.model_fields), "the input spec is not a pydantic model of the arguments"
    assert callable(MultipartSerde().parse_request), "MultipartSerde.parse_request is gone"
    assert "span_id" in BentoMLContainer.logging_formatting.get(), "the log format has no span_id any more"
    assert isinstance(BentoMLContainer.http.cors.enabled.get(), bool)
    assert hasattr(trace_context, "request_id"), "trace_context has no request_id any more"
