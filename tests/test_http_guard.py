"""The upload guard (serving/http_guard.py) in front of a small starlette app, in this process.

The served tests (test_service.py) check what clients see; these check the guard's hand-over on its
own: which requests reach the app behind it, and with what form.
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http_guard import FORM, MAX_FILENAME_BYTES, UploadGuard, UploadRule
from soundclassifier.options import ClassifyOptions

AUDIO = bytes(range(256)) * 1000  # any bytes: the guard does not decode them


class Behind:
    """The app behind the guard (the upload door in service.py): records what reached it."""

    def __init__(self):
        self.seen: list[dict] = []

    async def endpoint(self, request: Request) -> Response:
        form = request.scope[FORM]  # parsed by the guard; the body is read
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


def test_the_app_gets_the_parsed_form_and_its_files_are_closed_when_it_returns():
    """One parse per request: the app reads the form the guard parsed (a spooled file, on disk past
    1 MB as starlette spools it), and the guard closes it once the app is done, so what a request
    took on disk comes back."""
    kept = []

    async def app(scope, receive, send) -> None:
        upload = scope[FORM]["audio"]
        kept.append(upload.file)
        assert upload.file.read() == AUDIO * 5 and upload.file._rolled  # past 1 MB: a file on disk
        await JSONResponse({"answered_by": "app"})(scope, receive, send)

    client = TestClient(UploadGuard(app, rules={"/classify": UploadRule(8 << 20, ClassifyOptions)}))
    r = client.post("/classify", files={"audio": ("clip.wav", AUDIO * 5)}, data={"top_k": "3"})
    assert r.json() == {"answered_by": "app"}
    assert len(kept) == 1 and kept[0].closed


def test_a_boundary_the_parser_refuses_is_a_400():
    client, behind = guarded()
    b = "B" * 5000  # python-multipart allows 256 bytes
    body = f'--{b}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\nx\r\n--{b}--\r\n'
    r = client.post("/classify", content=body.encode(), headers={"content-type": f"multipart/form-data; boundary={b}"})
    assert r.status_code == 400 and "256" in r.json()["detail"]
    assert behind.seen == []
