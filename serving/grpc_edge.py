"""Bounds for the gRPC front door: connections, streams, messages and call time.

What grpcio's asyncio server (1.85) enforces by itself, given channel args (checked in
tests/test_grpc_edge.py against a real grpc.aio server and raw clients):
    grpc.max_connection_idle_ms       a connection with no call in progress for this long gets
                                      GOAWAY and is closed; a connection *with* an open call is
                                      never idle, however silent the call is
    grpc.server_handshake_timeout_ms  a TCP connection that never completes the HTTP/2 handshake
                                      (default 120 s)
    grpc.max_concurrent_streams       streams open per connection (HTTP/2 SETTINGS); more wait in
                                      the client. The server counts a finished call's stream for
                                      a moment after the client has its answer, so a client that
                                      keeps this many calls in flight gets a share of its next
                                      streams refused (RST_STREAM REFUSED_STREAM, which grpcio
                                      reports as UNAVAILABLE "Stream removed"): with 64 and 64
                                      callers on one channel, 102-347 of 640 calls failed. It is
                                      therefore set well above the call cap (`transport_streams`)
                                      and bounds only the transport.
    maximum_concurrent_rpcs           (grpc.aio.server argument) calls in progress in the whole
                                      server; more are answered RESOURCE_EXHAUSTED at once. It
                                      counts a call until its task is done, after the client has
                                      its answer, so it has the same race: it is a backstop at
                                      `transport_streams`, not the call cap.
    grpc.max_receive_message_length   bytes per message
    grpc.max_metadata_size / grpc.absolute_max_metadata_size   header block (8 / 16 KiB default)
    grpc.keepalive_time_ms / _timeout_ms and grpc.http2.max_ping_strikes   dead peers, ping floods
and what it does not: an exact cap on calls in progress, an open call whose client sends nothing,
the number of messages in a stream, or a cap on a call's wall time when the client set no
deadline (a client deadline is enforced: the handler is cancelled when it passes). `CallBudget`
adds those four as a server interceptor, so no servicer method changes (health's Watch, a request
answered by a stream, is left alone but for the call cap; bidirectional streams, Listen and
reflection, get the first three: a live stream has no wall-time cap, its work per message being
bounded by the session's own limits):
    max_calls      calls whose handler is running in this server (a worker): one more is answered
                   RESOURCE_EXHAUSTED at once, naming the limit, before its request is read
                   when the cap is already full as it arrives (and checked again, exactly, as
                   its handler starts). A call stops counting when its handler returns, before
                   grpc sends its answer, so a client that keeps `max_calls` calls in flight
                   never sees its next one refused. Health checks are not counted (`uncounted`):
                   a probe must answer while the server is busy.
    idle_s         a streaming call whose next message does not arrive within this: DEADLINE_EXCEEDED
    max_messages   more messages than this in one stream: RESOURCE_EXHAUSTED; not for the methods
                   named `self_counted`, whose handlers bound their messages themselves (Listen:
                   by the audio they carry, so a 4-h stream of 100-ms frames is not cut at 1.8 h)
    max_call_s     wall time of any call, however long the client's own deadline: DEADLINE_EXCEEDED
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass

import grpc

TRANSPORT_STREAMS_PER_CALL = 16
"""Streams per connection for each call the cap admits: room for streams that finished but that
the server still counts, and for calls beyond the cap to reach it and get its answer. The
transport's refusal cannot be avoided for a client that keeps more streams than this open on one
connection (grpc's overload protection, its defence against HTTP/2 rapid reset, refuses them
while finished ones are still counted): 1,024 at the default cap, 16x what the README tells a
client to run on a channel."""
HEALTH_SERVICE = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class GrpcLimits:
    idle_s: float = 30.0
    max_messages: int = 65536
    max_call_s: float = 600.0
    connection_idle_s: float = 60.0
    handshake_s: float = 20.0
    max_calls: int = 64
    max_streams_per_connection: int | None = None
    """None: `TRANSPORT_STREAMS_PER_CALL` x max_calls (see `transport_streams`)."""
    max_metadata_bytes: int = 16 * 1024

    @property
    def transport_streams(self) -> int:
        """HTTP/2 streams per connection, and grpc's own backstop on calls per server: well above
        `max_calls`, so the transport never refuses a stream the call cap would have taken."""
        return self.max_streams_per_connection or TRANSPORT_STREAMS_PER_CALL * self.max_calls

    def server_options(self) -> list[tuple[str, int]]:
        """Channel args for grpc.aio.server(options=...), besides message sizes and reuseport."""
        return [
            ("grpc.max_connection_idle_ms", int(self.connection_idle_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_s * 1000)),
            ("grpc.max_concurrent_streams", self.transport_streams),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            # Peers that vanish without a FIN (a pulled cable, a dead NAT entry): ping every 60 s
            # while a call is open, drop the connection if the ping is not answered in 20 s.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]


def grpc_limits(settings) -> GrpcLimits:
    """The limits as the service's settings (soundclassifier.config.Settings) give them."""
    return GrpcLimits(idle_s=settings.grpc_idle_s, max_messages=settings.grpc_max_messages,
                      max_call_s=settings.request_timeout_s, connection_idle_s=settings.grpc_connection_idle_s,
                      max_calls=settings.grpc_max_calls)


class CallBudget(grpc.aio.ServerInterceptor):
    """Per-call limits grpc has no option for (see the module docstring)."""

    def __init__(self, limits: GrpcLimits, self_counted: frozenset[str] | set[str] = frozenset(),
                 uncounted: tuple[str, ...] = (HEALTH_SERVICE,)):
        self.limits = limits
        self.self_counted = frozenset(self_counted)  # full method names, "/package.Service/Method"
        self.uncounted = uncounted  # method name prefixes the call cap does not count
        self.calls = 0  # handlers running (one event loop: no lock)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        limits = self.limits
        capped = not handler_call_details.method.startswith(self.uncounted)
        if capped and self.calls >= limits.max_calls:
            # Refused before its request is read: as a client stream, which grpc hands to the
            # handler unread (a unary handler gets its message only once it has all arrived).
            return grpc.stream_unary_rpc_method_handler(self._refuse)
        if handler.unary_unary is not None:
            behavior = self._timed(handler.unary_unary)
            return handler._replace(unary_unary=self._capped(behavior) if capped else behavior)
        if handler.stream_unary is not None:
            behavior = self._timed(self._streamed(handler.stream_unary, limits))
            return handler._replace(stream_unary=self._capped(behavior) if capped else behavior)
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            max_messages = None if handler_call_details.method in self.self_counted else limits.max_messages
            behavior = self._bidirectional(handler.stream_stream, limits.idle_s, max_messages)
            return handler._replace(stream_stream=self._capped_stream(behavior) if capped else behavior)
        # A request answered by a stream (grpc.health Watch) is meant to stay open: only counted.
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream) and capped:
            return handler._replace(unary_stream=self._capped_stream(handler.unary_stream))
        return handler

    def _refusal(self) -> str:
        return (f"too_busy: {self.calls} calls in progress, the limit of this server process "
                f"(SOUND_GRPC_MAX_CALLS={self.limits.max_calls}); retry shortly or spread calls over channels")

    async def _refuse(self, request_iterator, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal())

    def _capped(self, behavior):
        async def capped(request, context: grpc.aio.ServicerContext):
            if self.calls >= self.limits.max_calls:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal())
            self.calls += 1
            try:
                return await behavior(request, context)
            finally:  # before grpc sends the answer: the client's next call finds the room free
                self.calls -= 1

        return capped

    def _capped_stream(self, behavior):
        async def capped(request, context: grpc.aio.ServicerContext):
            if self.calls >= self.limits.max_calls:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal())
            self.calls += 1
            try:
                async for answer in behavior(request, context):
                    yield answer
            finally:
                self.calls -= 1

        return capped

    @staticmethod
    def _bidirectional(behavior, idle_s: float, max_messages: int | None):
        async def bounded(request_iterator, context: grpc.aio.ServicerContext):
            # A timer per message here (asyncio.timeout): these streams carry a few messages a
            # second (live audio, reflection queries), not the thousands a file upload may.
            count = 0
            while True:
                try:
                    async with asyncio.timeout(idle_s):
                        message = await anext(request_iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"No message for {idle_s:g} s: the stream is closed.")
                count += 1
                if max_messages is not None and count > max_messages:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"More than {max_messages} messages in one stream.")
                yield message

        async def streamed(request_iterator, context: grpc.aio.ServicerContext):
            async for answer in behavior(bounded(request_iterator, context), context):
                yield answer

        return streamed

    def _timed(self, behavior):
        max_call_s = self.limits.max_call_s

        async def timed(request, context: grpc.aio.ServicerContext):
            remaining = context.time_remaining()
            budget = max_call_s if remaining is None else min(max_call_s, remaining)
            try:
                async with asyncio.timeout(budget):
                    return await behavior(request, context)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"The call took longer than {budget:g} s.")

        return timed

    @staticmethod
    def _streamed(behavior, limits: GrpcLimits):
        async def streamed(request_iterator, context: grpc.aio.ServicerContext):
            # One timer per call, not one per message: asyncio.wait_for around each message cost
            # ~25 us of CPU per message (a task each), a third of what a message costs at all.
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            last, reading, idle = loop.time(), True, False
            timer = None

            def check() -> None:
                nonlocal timer, idle
                if not reading:
                    return
                if loop.time() - last >= limits.idle_s:
                    idle = True
                    task.cancel()
                else:
                    timer = loop.call_at(last + limits.idle_s, check)

            async def counted():
                nonlocal last, reading
                count = 0
                async for message in request_iterator:
                    last = loop.time()
                    count += 1
                    if count > limits.max_messages:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"More than {limits.max_messages} messages in one stream.")
                    yield message
                reading = False

            timer = loop.call_at(last + limits.idle_s, check)
            try:
                return await behavior(counted(), context)
            except asyncio.CancelledError:
                if not idle or task.uncancel() > 0:
                    raise
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"No message for {limits.idle_s:g} s: the stream is closed.")
            finally:
                reading = False
                timer.cancel()

        return streamed
