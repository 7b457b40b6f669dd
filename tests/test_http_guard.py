"""The upload guard (serving/http_guard.py) in front of a small starlette app, in this process.

The served tests (test_service.py) check what clients see; these check the guard's hand-over on its
own: which requests reach the app behind it, and what a route's `answer` is given.
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http_guard import UploadGuard, UploadRule

AUDIO = bytes(range(256)) * 1000  # any bytes: the guard does not decode them


class Behind:
    """The app behind the guard (BentoML in service.py): records what reached it."""

    def __init__(self):
        self.seen: list[dict] = []

    async def endpoint(self, request: Request) -> Response:
        form = await request.form()
        upload = form["audio"]
        self.seen.append({"audio": await upload.read(), "filename": upload.filename, "top_k": form.get("top_k")})
        return JSONResponse({"answered_by": "app"})


def guarded(answer=None) -> tuple[TestClient, Behind, list]:
    behind, handed = Behind(), []

    async def recording(form):
        handed.append({k: v for k, v in form.multi_items()})
        upload = form["audio"]
        handed[-1]["audio_bytes"] = await upload.read()
        return await answer(form)

    app = Starlette(routes=[Route("/classify", behind.endpoint, methods=["POST"])])
    rule = UploadRule(max_bytes=1 << 20, answer=recording if answer is not None else None)
    return TestClient(UploadGuard(app, rules={"/classify": rule})), behind, handed


def post(client: TestClient, **fields) -> Response:
    return client.post("/classify", files={"audio": ("clip.wav", AUDIO)}, data=fields)


async def answer_here(form):
    return JSONResponse({"answered_by": "guard", "top_k": form.get("top_k")})


async def decline(form):
    return None


def test_an_answer_gets_the_parsed_form_with_the_file_in_memory_and_the_app_is_not_called():
    client, behind, handed = guarded(answer_here)
    r = post(client, top_k="3")
    assert r.json() == {"answered_by": "guard", "top_k": "3"}
    assert handed[0]["audio_bytes"] == AUDIO and handed[0]["audio"].filename == "clip.wav"
    assert behind.seen == []


def test_a_declined_form_reaches_the_app_unchanged():
    client, behind, handed = guarded(decline)
    r = post(client, top_k="3")
    assert r.json() == {"answered_by": "app"}
    assert len(handed) == 1
    assert behind.seen == [{"audio": AUDIO, "filename": "clip.wav", "top_k": "3"}]


def test_without_an_answer_the_app_answers():
    client, behind, _ = guarded()
    assert post(client).json() == {"answered_by": "app"}
    assert behind.seen[0]["audio"] == AUDIO


@pytest.mark.parametrize("answer", [answer_here, None], ids=["answer", "no-answer"])
def test_bad_uploads_are_refused_before_anything_answers(answer):
    client, behind, handed = guarded(answer)
    assert client.post("/classify", content=b"garbage",
                       headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 400
    assert client.post("/classify", files={"sound": ("a.wav", AUDIO)}).status_code == 400
    assert client.post("/classify", json={"audio": "x"}).status_code == 415
    assert client.post("/classify", files={"audio": ("a.wav", b"x" * (2 << 20))}).status_code == 413
    assert behind.seen == [] and handed == []


def test_an_answer_that_fails_gets_a_json_500_and_the_app_is_not_called():
    async def broken(form):
        raise RuntimeError("a bug")

    client, behind, handed = guarded(broken)
    r = post(client)
    assert r.status_code == 500
    assert r.json() == {"error": "An unexpected error has occurred, please check the server log."}
    assert len(handed) == 1 and behind.seen == []
