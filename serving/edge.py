"""Deadlines at the HTTP edge: what uvicorn, as BentoML runs it, does not bound by itself.

BentoML starts uvicorn in each worker (`_bentoml_impl/worker/service.py` main(): `uvicorn.Config(
app, backlog, timeout_keep_alive, ...)` with `http` left at "auto"), so the protocol is uvicorn's
`HttpToolsProtocol` (httptools is installed). That protocol arms no timer until a first response
has been sent, and lets httptools grow a header without limit. Measured against a stock `bentoml
serve` (testkit/edge_probe.py): 64 idle, 64 header-trickling and 64 body-stalling connections all
still open after 15 s, and a 16 MiB header block read whole and answered 200.

`CancelOnDisconnect` (below) is the ASGI half: work for a client that has gone is cancelled.

`install()` swaps in `EdgeHttpToolsProtocol` (a subclass) for "auto". The service module calls it
at import: each BentoML worker imports the service (loader.load, service.py:186) before uvicorn
loads its protocol class (Config.load in Server._serve, after service.py:242), so this holds
however the server was started (`bentoml serve` with no flags, the Bento, the container).

Per connection, one timer enforces:
    head_timeout_s   a request head (request line + headers) must be complete this long after the
                     connection opened, or after the first byte of a later request on it; else
                     408 (or a silent close if nothing arrived) and close
    body_idle_s      while the body is read, no bytes for this long: reset (the app's receive()
                     gets http.disconnect). Time the server itself stops reading (uvicorn's flow
                     control, the app not consuming) does not count.
    send_idle_s      a response the client does not read (the transport's buffer stays above
                     its high-water mark) this long: reset
    max_head_bytes   a head larger than this: 431 and close, checked on every read, so at most
                     this plus one read (256 KiB) is ever buffered
    min_body_rate    bytes per second a body must average once it has taken `body_idle_s`: a body
                     trickling just often enough never to be idle held its connection and request
                     slot until the request timeout (600 s); slower ones are reset. Time the
                     server itself stops reading does not count.
    max_connections  HTTP connections open in this worker process; one more is answered 503 with
                     Retry-After and closed at once, before its request is read (idle kept-alive
                     connections count: each holds a socket and a parser)
    keep_alive_s     idle time between requests (uvicorn's timeout_keep_alive), replacing the 5 s
                     default BentoML passes when --timeout-keep-alive is not given

After an upgrade the connection belongs to uvicorn's WebSocket protocol ("auto": websockets' sans-I/O
implementation, websockets being installed; pinned in requirements/serve.txt). `install()` swaps in
a subclass that sets uvicorn's own WebSocket settings, which BentoML does not pass either:
    ws_max_bytes     largest message (SOUND_LISTEN_MAX_FRAME_KB): larger ones close the socket
                     with 1009 before the app reads them (uvicorn's default: 16 MiB)
    ws_ping_s        a ping this often, and the socket closed (1011) when its pong is this late
The protocol reads one message at a time: the next is read from the socket only when the app has
received the previous one, so a stream that is slow to answer slows its client down.

`install()` also replaces BentoML's request deadline (`traffic={"timeout": ...}`, BentoML 1.4's
TimeoutMiddleware) with `RequestDeadline`: the same 504, but its timer is cancelled once the
response has started. BentoML's is never cancelled, so every request stayed referenced by the
event loop for the whole timeout (600 s), with its context and tracing span: about 5 KB and 20
objects a request, which under a 32-client load grew a worker by 13-50 MiB every 10 s and made
each full garbage collection walk hundreds of thousands of them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from dataclasses import dataclass

_IDLE, _HEAD, _BODY, _APP = range(4)
REFUSED_LINGER_S = 2.0  # how long a refused connection's remaining bytes are read and dropped


@dataclass(frozen=True)
class EdgeLimits:
    """Connection limits of the HTTP front door (see the module docstring for each)."""

    head_timeout_s: float = 30.0
    body_idle_s: float = 30.0
    send_idle_s: float = 60.0
    max_head_bytes: int = 64 * 1024
    keep_alive_s: float | None = 75.0
    """None: keep what uvicorn was given (--timeout-keep-alive, or BentoML's 5 s)."""
    ws_max_bytes: int = 256 * 1024
    ws_ping_s: float = 20.0
    min_body_rate: float = 1024.0
    max_connections: int = 1024


def edge_limits(settings) -> EdgeLimits:
    """The limits as the service's settings (soundclassifier.config.Settings) give them."""
    return EdgeLimits(head_timeout_s=settings.head_timeout_s, body_idle_s=settings.body_idle_s,
                      send_idle_s=settings.send_idle_s, max_head_bytes=settings.max_head_kb * 1024,
                      keep_alive_s=settings.keep_alive_s, ws_max_bytes=settings.listen_max_frame_kb * 1024,
                      min_body_rate=settings.min_body_kb_s * 1024, max_connections=settings.max_connections)


def protocol_class(limits: EdgeLimits) -> type:
    """uvicorn's httptools protocol with `limits` enforced."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class EdgeHttpToolsProtocol(HttpToolsProtocol):
        edge = limits
        open_connections = 0  # in this process (one event loop: no lock)

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            if self.edge.keep_alive_s is not None:
                self.timeout_keep_alive = self.edge.keep_alive_s
            self._phase = _IDLE
            self._since = 0.0  # HEAD: when the head started; BODY: the last body bytes
            self._head_bytes, self._head_tail = 0, b""  # the current head's bytes so far, its last 3
            self._write_paused_at: float | None = None
            self._timer = None
            self._refused = False
            self._counted = False
            self._body_bytes, self._body_reading_s, self._body_clock = 0, 0.0, 0.0

        # --- phases ----------------------------------------------------------------------------

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            cls = type(self)
            if cls.open_connections >= self.edge.max_connections:
                self._refuse(503, b"Service Unavailable", "overloaded",
                             f"This server process has {cls.open_connections} connections open, its limit "
                             "(SOUND_MAX_CONNECTIONS); retry shortly.", retry_after=True)
                return
            cls.open_connections += 1
            self._counted = True
            self._start_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase != _HEAD:  # a later request on a kept-alive connection: its own clock
                self._start_head()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._phase, self._since = _BODY, self.loop.time()
            self._body_bytes, self._body_reading_s, self._body_clock = 0, 0.0, self._since
            self._arm(self._since + self.edge.body_idle_s)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes, self._head_tail = 0, b""  # whatever arrives next is the next head
            self._phase = _APP  # the app's time is bounded by BentoML's traffic.timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer
            if self._phase == _APP:
                self._phase = _IDLE

        def data_received(self, data: bytes) -> None:
            if self._refused:  # the rest of a refused request: read and dropped until we close
                return
            if self._phase == _BODY:
                self._since = self.loop.time()
                self._body_bytes += len(data)
            if self._phase != _BODY and self._head_too_large(data):
                self._refuse(431, b"Request Header Fields Too Large", "too_large",
                             f"The request head is over {self.edge.max_head_bytes:,} bytes.")
                return
            super().data_received(data)

        def _head_too_large(self, data: bytes) -> bool:
            # Counted before the parser sees the bytes: a whole oversized head often arrives in
            # one read, and once parsed it would already be a request on its way to the app.
            probe = self._head_tail + data
            end = probe.find(b"\r\n\r\n")
            used = len(data) if end < 0 else end + 4 - len(self._head_tail)
            if self._head_bytes + used > self.edge.max_head_bytes:
                return True
            self._head_bytes += used
            self._head_tail = probe[-3:] if end < 0 else b""
            return False

        def pause_writing(self) -> None:
            super().pause_writing()
            self._write_paused_at = self.loop.time()
            self._arm(self._write_paused_at + self.edge.send_idle_s)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._write_paused_at = None

        def handle_websocket_upgrade(self) -> None:
            # The connection becomes the WebSocket protocol's, with its own pings and timeouts (and
            # its own cap: SOUND_LISTEN_MAX_STREAMS), and this protocol never sees it close.
            self._uncount()
            self._phase = _IDLE
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().handle_websocket_upgrade()

        def connection_lost(self, exc) -> None:
            self._uncount()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def _uncount(self) -> None:
            if self._counted:
                self._counted = False
                type(self).open_connections -= 1

        # --- the one timer ---------------------------------------------------------------------

        def _start_head(self) -> None:
            # The head's byte count is not reset here: data_received counted this head's first bytes
            # before the parser called on_message_begin (it is reset when the previous message ends).
            self._phase, self._since = _HEAD, self.loop.time()
            self._arm(self._since + self.edge.head_timeout_s)

        def _arm(self, deadline: float) -> None:
            # One pending timer per connection, moved earlier when needed, never per read.
            if self._timer is not None:
                if self._timer.when() <= deadline:
                    return
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)

        def _check(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            deadlines = []
            if self._phase == _HEAD:
                if now >= self._since + self.edge.head_timeout_s:
                    if self._head_bytes:
                        self._refuse(408, b"Request Timeout", "timeout",
                                     f"The request head took over {self.edge.head_timeout_s:g} s.")
                    else:
                        self.transport.close()
                    return
                deadlines.append(self._since + self.edge.head_timeout_s)
            elif self._phase == _BODY:
                if self.flow.read_paused:  # our side stopped reading: not the client's stall
                    self._since = now
                else:  # the time the client had to send, for its rate
                    self._body_reading_s += now - self._body_clock
                self._body_clock = now
                if now >= self._since + self.edge.body_idle_s:
                    self.logger.info("closing a connection whose request body stalled for %.0f s", now - self._since)
                    self._reset()
                    return
                reading_s = self._body_reading_s
                if reading_s >= self.edge.body_idle_s and self._body_bytes < self.edge.min_body_rate * reading_s:
                    self.logger.info("closing a connection whose request body came at %.0f bytes/s for %.0f s",
                                     self._body_bytes / reading_s, reading_s)
                    self._reset()
                    return
                # Checked again at the idle deadline, or once a second past the grace for the rate.
                deadlines.append(min(self._since + self.edge.body_idle_s,
                                     now + max(1.0, self.edge.body_idle_s - reading_s)))
            if self._write_paused_at is not None:
                if now >= self._write_paused_at + self.edge.send_idle_s:
                    self.logger.info("aborting a connection that read none of its answer for %.0f s",
                                     now - self._write_paused_at)
                    self._reset()
                    return
                deadlines.append(self._write_paused_at + self.edge.send_idle_s)
            if deadlines:
                self._arm(min(deadlines))

        def _reset(self) -> None:
            # abort() drops uvicorn's buffer, but a plain close leaves what the kernel already
            # holds (megabytes on an autotuned socket) to drain to a client that does not read:
            # a zero linger time makes the close a reset that frees it at once.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()

        def _refuse(self, status: int, reason: bytes, error: str, detail: str, retry_after: bool = False) -> None:
            # The client may still be sending the rest of its head: closing with unread bytes
            # would reset the connection and lose the answer (seen with a 200 KB header block). So
            # answer, stop writing, drop what still arrives for a moment, then close.
            body = json.dumps({"error": error, "detail": detail}).encode()  # as every other refusal
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
                b"connection: close\r\n\r\n%s" % (status, reason, len(body),
                                                   b"retry-after: 1\r\n" if retry_after else b"", body)
            )
            self._refused, self._phase = True, _IDLE
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

    return EdgeHttpToolsProtocol


def ws_protocol_class(limits: EdgeLimits) -> type:
    """uvicorn's websockets (sans-I/O) protocol with `limits`' message size and pings."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
        edge = limits

        def __init__(self, config, *args, **kwargs) -> None:
            # uvicorn's Config is the server's own (one per worker); these fields are read by the
            # WebSocket protocol only, as `uvicorn --ws-max-size --ws-ping-interval` would set them.
            config.ws_max_size = self.edge.ws_max_bytes
            config.ws_ping_interval = config.ws_ping_timeout = self.edge.ws_ping_s
            super().__init__(config, *args, **kwargs)

    return EdgeWebSocketProtocol


def install(limits: EdgeLimits) -> None:
    """Make uvicorn's "auto" HTTP and WebSocket protocols the guarded ones, in this process (a
    BentoML worker: call at import of the service module). Refuses to run unguarded: without
    httptools, uvicorn would fall back to h11, whose timers this class does not cover."""
    import httptools  # noqa: F401  (the dependency this protocol subclasses; fail loudly if absent)
    from uvicorn import config

    module = sys.modules[__name__]
    # Importable by name: uvicorn resolves "module:attr".
    module.EdgeHttpToolsProtocol = protocol_class(limits)
    module.EdgeWebSocketProtocol = ws_protocol_class(limits)
    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:EdgeHttpToolsProtocol"
    config.WS_PROTOCOLS["auto"] = f"{__name__}:EdgeWebSocketProtocol"
    from bentoml._internal.server.http import traffic

    # BentoML's app factory imports the class by name when it builds the app (base_app.py
    # `middlewares`), which happens after the service module is imported.
    traffic.TimeoutMiddleware = RequestDeadline


class RequestDeadline:
    """ASGI middleware, BentoML's TimeoutMiddleware without its leak (module docstring): a request
    whose response has not started `timeout` seconds after it arrived is cancelled and answered
    504 (a WebSocket not yet accepted: closed, 1013); the timer goes as soon as the response
    starts or the request ends."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.create_future()  # done at the first message sent, or when the app returns

        def settle(outcome: BaseException | None = None) -> None:
            if started.done():
                return
            if outcome is None:
                started.set_result(None)
            else:
                started.set_exception(outcome)

        async def send_(message: dict) -> None:
            settle()
            await send(message)

        timer = loop.call_later(self.timeout, settle, TimeoutError())
        work = asyncio.ensure_future(self.app(scope, receive, send_))
        work.add_done_callback(lambda _: settle())
        try:
            await started
        except TimeoutError:
            if work.cancel():
                await self._expired(scope, send)
            return
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            timer.cancel()
        await work

    async def _expired(self, scope, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013, "reason": "not accepted in time"})
            return
        body = json.dumps({"error": f"Not able to process the request in {self.timeout} seconds"}).encode()
        await send({"type": "http.response.start", "status": 504,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, sent to no one


class CancelOnDisconnect:
    """ASGI middleware: stop working on a request whose client has gone.

    uvicorn reports a closed connection only to a `receive()` that is waiting (RequestResponseCycle.
    receive returns {"type": "http.disconnect"} once connection_lost ran), and a handler that has
    read its body never waits there again. So once the body has been read, a watcher task waits
    on `receive()` for the handler and, if the client goes before the response is complete,
    cancels the task the request runs in. The cancelled request is then answered with 499, which
    uvicorn drops (the connection is gone) but BentoML's access log, metrics and its
    TimeoutMiddleware (which waits for a response start, not for the app to return) see.

    Cost: one task per request with a body, started after the body is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        task = asyncio.current_task()
        watcher: asyncio.Task | None = None
        started = finished = gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:
                gone = True
                task.cancel()

        async def receive_() -> dict:
            nonlocal watcher
            message = await receive()
            if watcher is None and message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def send_(message: dict) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:  # someone else cancelled us too: let it through
                raise
            if not started:
                await send({"type": "http.response.start", "status": CLIENT_GONE, "headers": []})
                await send({"type": "http.response.body", "body": b""})
        finally:
            if watcher is not None:
                watcher.cancel()
