"""The upload guard (serving/http_guard.py) in front of a small starlette app, in this process.

The served tests (test_service.py) check what clients see; these check the guard's hand-over on its
own: which requests reach the app behind it, and unchanged.
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http_guard import MAX_FILENAME_BYTES, UploadGuard, UploadRule
from soundclassifier.options import ClassifyOptions

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
    return TestClient(UploadGuard(app, rules={"/classify": UploadRule(1 << 20, ClassifyOptions)})), behind


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


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"top_k": "9" * 5000}, "top_k"),               # BentoML's json.loads: ValueError, a 500
        ({"top_k": "[" * 100_000}, "top_k"),            # RecursionError, a 500
        ({"min_confidence": "NaN"}, "min_confidence"),
        ({"top_k": "51"}, "50"),
        ({"note": "x" * 5000}, "Unknown field 'xxx"[:15]),
        ({"note": "1"}, "Unknown field 'note'"),
    ],
    ids=["long-number", "nested-brackets", "nan", "over-bound", "long-unknown", "unknown"],
)
def test_a_bad_text_field_is_a_400_naming_it_and_never_reaches_the_app(fields, said):
    client, behind = guarded()
    r = client.post("/classify", files={"audio": ("clip.wav", AUDIO)}, data=fields)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request" and said in r.json()["detail"]
    assert behind.seen == []


def test_a_file_name_too_long_for_a_temporary_file_is_refused():
    client, behind = guarded()
    for name in ("a" * 300 + ".wav", "語" * 90 + ".wav"):
        r = client.post("/classify", files={"audio": (name, AUDIO)})
        assert r.status_code == 400 and str(MAX_FILENAME_BYTES) in r.json()["detail"]
    ok = "b" * (MAX_FILENAME_BYTES - 4) + ".wav"
    assert client.post("/classify", files={"audio": (ok, AUDIO)}).status_code == 200
    assert [seen["filename"] for seen in behind.seen] == [ok]


def test_a_route_without_arguments_takes_no_body_or_an_empty_json_object():
    from serving.http_guard import NoArgumentsRule

    async def info(request: Request) -> Response:
        return JSONResponse({"model": "m", "body": (await request.body()).decode()})

    app = Starlette(routes=[Route("/info", info, methods=["GET", "POST"])])
    client = TestClient(UploadGuard(app, rules={"/info": NoArgumentsRule()}))
    assert client.post("/info").json()["model"] == "m"
    assert client.post("/info", json={}).json() == {"model": "m", "body": "{}"}
    assert client.get("/info").status_code == 200
    assert client.post("/info", data={"a": "b"}).status_code == 415  # url-encoded: BentoML answered 500
    assert client.post("/info", json={"a": 1}).status_code == 400
    assert client.post("/info", content=b"{" * 10, headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/info", content=b" " * (64 << 20), headers={"content-type": "application/json"}).status_code == 413


def test_the_body_passes_piece_by_piece_and_the_last_piece_only_once_the_form_is_checked():
    """The guard holds no copy of an upload (issue 18: disk <= 1x the upload): each piece reaches
    the app as it arrives; only the last waits for the whole form's check, and a bad field found
    there stops the app before it has the whole body."""
    import asyncio

    import httpx

    async def run(fields: dict) -> tuple[list[int], list[dict], list[int]]:
        request = httpx.Request("POST", "http://x/classify", files={"audio": ("clip.wav", AUDIO)}, data=fields)
        body = request.read()
        pieces = [body[i:i + 10_000] for i in range(0, len(body), 10_000)]
        given, reached, sent = [], [], []

        async def receive() -> dict:
            i = len(given)
            given.append(i)
            return {"type": "http.request", "body": pieces[i], "more_body": i < len(pieces) - 1}

        async def app(scope, receive_, send_) -> None:
            while True:
                message = await receive_()
                reached.append(len(given))  # how many pieces the client had given when this one arrived
                if not message["more_body"]:
                    break
            await send_({"type": "http.response.start", "status": 200, "headers": []})
            await send_({"type": "http.response.body", "body": b"app"})

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": "/classify",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}
        await UploadGuard(app, rules={"/classify": UploadRule(1 << 20, ClassifyOptions)})(scope, receive, send)
        return reached, sent, pieces

    reached, sent, pieces = asyncio.run(run({"top_k": "3"}))
    assert len(pieces) > 20 and reached == list(range(1, len(pieces) + 1)) and sent == [200]
    reached, sent, pieces = asyncio.run(run({"top_k": "51"}))
    assert reached == list(range(1, len(pieces))) and sent == [400]  # all but the last piece


def test_a_boundary_the_parser_refuses_is_a_400():
    client, behind = guarded()
    b = "B" * 5000  # python-multipart allows 256 bytes
    body = f'--{b}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\nx\r\n--{b}--\r\n'
    r = client.post("/classify", content=body.encode(), headers={"content-type": f"multipart/form-data; boundary={b}"})
    assert r.status_code == 400 and "256" in r.json()["detail"]
    assert behind.seen == []
