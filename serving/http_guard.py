"""ASGI middleware that checks uploads before BentoML parses them.

BentoML answers a malformed multipart body with 500, buffers uploads of any size, and, for a file
field sent as text, downloads the URL it contains. This guard runs first on the upload routes and
turns each of those into a clear 4xx:
    415  the body is not multipart/form-data
    413  the body exceeds the route's size limit (checked on Content-Length and while reading)
    400  the multipart body is malformed, a required file field is missing, or was sent as text,
         a text field is not one of the route's arguments or its value is out of bounds (checked
         by the core's own rules, soundclassifier.options: BentoML `json.loads` every text field
         and answered a 5000-digit number or deeply nested brackets with 500), or a file's name
         is longer than MAX_FILENAME_BYTES (BentoML puts it in a temporary file's name)
A body that passes is replayed unchanged to BentoML. Large bodies spill to a temporary file.

The check runs starlette's own multipart parser (the one BentoML runs next), so it refuses exactly
what would make BentoML fail, but keeps only the form's shape: file contents are not copied (a long
recording for /timeline would otherwise be written to a temporary file here and again by BentoML).

Until the previous round the guard also answered /classify itself from its own parse, beside
BentoML's declared route: -0.9 and -0.1 ms p50 at one client in two A/Bs of 10 rounds, below what
this machine can tell from noise, for a second copy of the route's arguments and answer. Removed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartParser

from soundclassifier.config import Settings
from soundclassifier.options import ClassifyOptions, InvalidArgumentError, TimelineOptions, validate_options

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
CHUNK = 1 << 20  # large bodies are replayed from disk in pieces of this size
SPOOL_BYTES = 8 << 20
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
        "/classify_batch": UploadRule(int(8 * settings.max_upload_mb * _MB), ClassifyOptions),
        "/timeline": UploadRule(int(settings.max_timeline_upload_mb * _MB) + _MB, TimelineOptions),
        "/info": NoArgumentsRule(),
    }


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
        with _Body() as body:
            if not await body.read(receive, send, rule.max_bytes):
                return
            problem = await _form_problem(scope, body, rule)
            if problem:
                await _reject(send, 400, "bad_request", problem)
                return
            await self.app(scope, _replay(body, then=receive), send)

    async def _no_arguments(self, scope: Scope, receive: Receive, send: Send, rule: NoArgumentsRule,
                            headers: Headers) -> None:
        with _Body() as body:
            if not await body.read(receive, send, rule.max_bytes):
                return
            data = b"".join(body.pieces())
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
            await self.app(scope, _replay(body, then=receive), send)


class _Body:
    """The request body: chunks in memory up to SPOOL_BYTES, then a temporary file.

    Not a SpooledTemporaryFile: its writes and reads copied every byte twice more and cost
    ~1 ms per 0.4 MB upload here; small bodies are joined once and replayed as one message."""

    def __init__(self):
        self.size = 0
        self.chunks: list[bytes] = []
        self.file = None

    async def read(self, receive: Receive, send: Send, max_bytes: int) -> bool:
        """Read the whole body; False if the client left or the body is over `max_bytes` (then
        answered with 413)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            self.write(message.get("body", b""))
            if self.size > max_bytes:
                await _reject(send, 413, "too_large", _too_large(self.size, max_bytes), close=True)
                return False
            if not message.get("more_body", False):
                return True

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.file is None and self.size > SPOOL_BYTES:
            self.file = tempfile.TemporaryFile()
            self.file.writelines(self.chunks)
            self.chunks = []
        if self.file is not None:
            self.file.write(chunk)
        elif chunk:
            self.chunks.append(chunk)

    def pieces(self) -> Iterator[bytes]:
        if self.file is None:
            if len(self.chunks) > 1:
                self.chunks = [b"".join(self.chunks)]
            yield from self.chunks
            return
        self.file.seek(0)
        while piece := self.file.read(CHUNK):
            yield piece

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


class _FormShape(MultiPartParser):
    """starlette's multipart parser, minus the copying of file contents."""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:  # text fields: kept, and size-checked as usual
            super().on_part_data(data, start, end)


async def _chunks(body: _Body):
    for piece in body.pieces():
        yield piece


async def _form_problem(scope: Scope, body: _Body, rule: UploadRule) -> str | None:
    """What is wrong with the body's form, or None."""
    try:
        form = await _FormShape(Headers(scope=scope), _chunks(body)).parse()
    except Exception as e:  # starlette raises HTTPException / MultiPartException / ValueError
        return f"The multipart body is malformed ({getattr(e, 'detail', None) or e})."
    try:
        return _file_field_problem(form, rule.file_fields) or _text_field_problem(form, rule)
    finally:
        await form.close()


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


def _replay(body: _Body, then: Receive | None = None) -> Receive:
    """A `receive` that plays the buffered body, then defers to `then` (the client's own
    channel, which reports a real disconnect) or reports a disconnect itself."""
    pieces = body.pieces()
    current = next(pieces, b"")
    done = False

    async def receive() -> dict:
        nonlocal current, done
        if done:
            return await then() if then is not None else {"type": "http.disconnect"}
        chunk, current = current, next(pieces, None)
        done = current is None
        return {"type": "http.request", "body": chunk, "more_body": not done}

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
