"""The upload guard (serving/http_guard.py) in front of a small starlette app, in this process.

The served tests (test_service.py) check what clients see; these check the guard's hand-over on its
own: which requests reach the app behind it, and unchanged.
"""

from __future__ import annotations

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


def guarded() -> tuple[TestClient, Behind]:
    behind = Behind()
    app = Starlette(routes=[Route("/classify", behind.endpoint, methods=["POST"])])
    return TestClient(UploadGuard(app, rules={"/classify": UploadRule(max_bytes=1 << 20)})), behind


def test_a_good_form_reaches_the_app_unchanged():
    client, behind = guarded()
    r = client.post("/classify", files={"audio": ("clip.wav", AUDIO)}, data={"top_k": "3"})
    assert r.json() == {"answered_by": "app"}
    assert behind.seen == [{"audio": AUDIO, "filename": "clip.wav", "top_k": "3"}]


def test_bad_uploads_are_refused_before_the_app_sees_them():
    client, behind = guarded()
    assert client.post("/classify", content=b"garbage",
                       headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 400
    assert client.post("/classify", files={"sound": ("a.wav", AUDIO)}).status_code == 400
    assert client.post("/classify", json={"audio": "x"}).status_code == 415
    assert client.post("/classify", files={"audio": ("a.wav", b"x" * (2 << 20))}).status_code == 413
    assert behind.seen == []
