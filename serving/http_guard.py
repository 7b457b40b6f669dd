"""ASGI middleware that reads and checks an upload's form before anything else sees it.

BentoML answers a malformed multipart body with 500, buffers uploads of any size, and, for a file
field sent as text, downloads the URL it contains. This guard runs first on the upload routes, parses
the form itself with starlette's multipart parser (files spooled in memory up to 1 MB, on disk beyond,
as starlette spools them) and turns each of those into a clear 4xx:
    415  the body is not multipart/form-data
    413  the body exceeds the route's size limit (checked on Content-Length and while reading)
    400  the multipart body is malformed, a required file field is missing, or was sent as text,
         a text field is not one of the route's arguments or its value is out of bounds (checked
         by the core's own rules, soundclassifier.options: BentoML `json.loads` every text field
         and answered a 5000-digit number or deeply nested brackets with 500), or a file's name
         is longer than MAX_FILENAME_BYTES
A form that passes goes on in the scope (`scope[FORM]`), its body read, to the upload door
(serving/door.py), which answers from it: the upload is parsed once and held once. Its files are
closed when the app behind returns.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from soundclassifier.config import Settings
from soundclassifier.errors import InvalidArgumentError
from soundclassifier.options import ClassifyOptions, TimelineOptions, validate_options

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
MAX_FILENAME_BYTES = 200  # file systems allow 255 per name; BentoML adds a prefix


@dataclass(frozen=True)
class NoArgumentsRule:
    """A route that takes no arguments (POST /info): an empty body, or an empty JSON object."""

    max_bytes: int = 1024


@dataclass(frozen=True)
class UploadRule:
    max_bytes: int
    options: type[ClassifyOptions] | None = None  # the route's text fields; None: none
    file_fields: tuple[str, ...] = ("audio",)


_MB = 2**20


def upload_rules(settings: Settings) -> dict[str, UploadRule | NoArgumentsRule]:
    """The service's upload routes and their body limits (the file limit plus room for the form),
    and the routes that take no body."""
    clip = int(settings.max_upload_mb * _MB) + _MB
    return {
        "/classify": UploadRule(clip, ClassifyOptions),
        "/spectrogram": UploadRule(clip),
        # Each file is within SOUND_MAX_UPLOAD_MB (the pipeline checks it), the whole request within 8
        # of them rather than SOUND_MAX_BATCH_FILES x: the whole body is spooled before a file is
        # decoded, and 32 x 50 MB would be 1.6 GB held by one request. SOUND_MAX_UPLOAD_MB says so.
        "/classify_batch": UploadRule(int(8 * settings.max_upload_mb * _MB), ClassifyOptions),
        "/timeline": UploadRule(int(settings.max_timeline_upload_mb * _MB) + _MB, TimelineOptions),
        "/info": NoArgumentsRule(),
    }


FORM = "sound_classifier.form"
"""The scope key under which the guard hands the parsed form (starlette's FormData) to the app."""


class UploadGuard:
    def __init__(self, app, rules: dict[str, UploadRule | NoArgumentsRule]):
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if isinstance(rule, NoArgumentsRule):
            await self._no_arguments(scope, receive, send, rule, headers)
            return
        if not headers.get("content-type", "").startswith("multipart/form-data"):
            await _reject(send, 415, "unsupported_media_type",
                          f"Send the audio as multipart/form-data with a file field '{rule.file_fields[0]}'.")
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > rule.max_bytes:
            await _reject(send, 413, "too_large", _too_large(int(declared), rule.max_bytes), close=True)
            return
        await self._parse_and_call(scope, receive, send, rule, headers)

    async def _parse_and_call(self, scope: Scope, receive: Receive, send: Send, rule: UploadRule,
                              headers: Headers) -> None:
        size, read_all = 0, False

        async def body() -> AsyncIterator[bytes]:
            nonlocal size, read_all
            while not read_all:
                message = await receive()
                if message["type"] != "http.request":
                    raise _Answered  # the client left mid-body
                chunk, read_all = message.get("body", b""), not message.get("more_body", False)
                size += len(chunk)
                if size > rule.max_bytes:
                    await _reject(send, 413, "too_large", _too_large(size, rule.max_bytes), close=True)
                    raise _Answered
                yield chunk

        try:
            form = await MultiPartParser(headers, body()).parse()
        except _Answered:
            return
        except MultiPartException as e:  # the parser has closed the files it opened
            await _reject(send, 400, "bad_request", _malformed(e), close=not read_all)
            return
        try:
            problem = _form_problem(form, rule)
            if problem:
                await _reject(send, 400, "bad_request", problem)
                return
            await self.app({**scope, FORM: form}, receive, send)
        finally:
            await form.close()

    async def _no_arguments(self, scope: Scope, receive: Receive, send: Send, rule: NoArgumentsRule,
                            headers: Headers) -> None:
        data = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            data += message.get("body", b"")
            if len(data) > rule.max_bytes:
                await _reject(send, 413, "too_large", _too_large(len(data), rule.max_bytes), close=True)
                return
            if not message.get("more_body", False):
                break
        if data.strip():
            if not headers.get("content-type", "").startswith("application/json"):
                await _reject(send, 415, "unsupported_media_type", "This route takes no body, or {} as JSON.")
                return
            try:
                arguments = json.loads(data)
            except ValueError:
                arguments = None
            if arguments != {}:
                await _reject(send, 400, "bad_request", "This route takes no arguments: send no body, or {}.")
                return
        await self.app(scope, _replay(data, then=receive), send)


class _Answered(BaseException):
    """Raised out of the body the parser reads once the guard has answered (or the client has
    left): it unwinds starlette's parser (which closes the files it opened) up to the guard. A
    BaseException, so that the parser does not take it for a malformed body."""


def _malformed(e: MultiPartException) -> str:
    cause = f": {e.__cause__}" if e.__cause__ is not None else ""  # python-multipart's own words
    return f"The multipart body is malformed ({e.message.rstrip('.')}{cause})."


def _form_problem(form: FormData, rule: UploadRule) -> str | None:
    """What is wrong with a whole form, or None."""
    return _file_field_problem(form, rule.file_fields) or _text_field_problem(form, rule)


def _file_field_problem(form: FormData, names: tuple[str, ...]) -> str | None:
    for name in names:
        values = form.getlist(name)
        if not values:
            return f"The file field '{name}' is missing."
        if not all(isinstance(v, UploadFile) for v in values):
            return f"The field '{name}' must be a file upload, not text."
        for v in values:
            if len((v.filename or "").encode()) > MAX_FILENAME_BYTES:
                return f"A file name is longer than {MAX_FILENAME_BYTES} bytes; send a shorter one."
    return None


def _text_field_problem(form: FormData, rule: UploadRule) -> str | None:
    allowed = set(rule.options.model_fields) if rule.options else set()
    for name, value in form.multi_items():
        if name in rule.file_fields:
            continue
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            return f"Unknown field '{name[:40]}'; this route takes: {rule.file_fields[0]} (file), {known}."
        if isinstance(value, UploadFile):
            return f"The field '{name}' must be text, not a file."
        try:
            validate_options(rule.options, {name: value})
        except InvalidArgumentError as e:
            return str(e)
    return None


def _replay(body: bytes, then: Receive) -> Receive:
    """A `receive` that plays the read body, then defers to `then` (the client's own channel,
    which reports a real disconnect)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _too_large(size: int, limit: int) -> str:
    return f"The upload is {size:,} bytes or more; the limit is {limit:,} bytes."


async def _reject(send: Send, status: int, error: str, detail: str, close: bool = False) -> None:
    """`close`: the body was not read to its end; closing the connection spares reading (and
    dropping) the rest of it: a 200 MiB upload refused on Content-Length got its 413 in 0.4 s
    instead of 7 (docs/edge.md)."""
    payload = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
