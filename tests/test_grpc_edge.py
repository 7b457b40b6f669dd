"""serving/grpc_edge.py against a real grpc.aio server (in a thread) and real or raw clients.

Each test names the option or the CallBudget rule it checks; limits are 1 s so the suite is quick.
A server without the options is checked too, where the point is that grpc does not do it alone.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import pytest

from serving.grpc_edge import CallBudget, GrpcLimits
from testkit.server import free_port

pytestmark = pytest.mark.served  # every test here waits on a real gRPC server's timers (1-s limits)
LIMITS = GrpcLimits(idle_s=1, max_messages=1000, max_call_s=2, connection_idle_s=1, handshake_s=1, max_calls=8)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


class _Server:
    def __init__(self, limits: GrpcLimits | None):
        self.port = free_port()
        self.cancelled: list[float] = []
        self.started: list[float] = []
        ready = threading.Event()

        async def upload(request_iterator, context):
            return str(sum([1 async for _ in request_iterator])).encode()

        async def count(request_iterator, context):  # bidirectional: the count once the client ends
            yield str(sum([1 async for _ in request_iterator])).encode()

        async def sleep(request, context):
            start = time.monotonic()
            self.started.append(start)
            try:
                await asyncio.sleep(float(request.decode()))
            except asyncio.CancelledError:
                self.cancelled.append(time.monotonic() - start)
                raise
            return b"ok"

        async def main():
            if limits is None:
                server = grpc.aio.server()
            else:
                server = grpc.aio.server(options=limits.server_options(),
                                         interceptors=[CallBudget(limits, self_counted={"/edge.Test/SelfCounted"})],
                                         maximum_concurrent_rpcs=limits.transport_streams)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edge.Test", {
                "Upload": grpc.stream_unary_rpc_method_handler(upload),
                "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
                "Counted": grpc.stream_stream_rpc_method_handler(count),
                "SelfCounted": grpc.stream_stream_rpc_method_handler(count),
            }),))
            server.add_insecure_port(f"127.0.0.1:{self.port}")
            await server.start()
            self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await self.stopping.wait()
            await server.stop(0)

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture(scope="module")
def bounded():
    server = _Server(LIMITS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unbounded():
    server = _Server(None)
    yield server
    server.stop()


def _closed_after(port: int, payload: bytes, wait_s: float) -> float | None:
    """Seconds until the server closed a raw connection that sent `payload` and then nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        start = time.monotonic()
        s.sendall(payload)
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - start


def _run(coro):
    return asyncio.run(coro)


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    """Poll until `condition()` holds (a handler's cancellation is logged when its task next runs,
    maybe after the client has its answer)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# Timers never fire early, so each limit is checked from below exactly; from above only against what
# would happen without it (grpc's defaults: 120 s, never; a handler that sleeps 30 s), with room for
# a loaded machine.
LATE_S = 10.0


@pytest.mark.parametrize("payload", [b"", HTTP2_PREFACE], ids=["silent-tcp", "http2-no-call"])
def test_connections_without_calls_are_closed(bounded, unbounded, payload):
    # grpc.server_handshake_timeout_ms closes the silent socket, grpc.max_connection_idle_ms both.
    assert _closed_after(unbounded.port, payload, wait_s=3) is None  # grpc's defaults: 120 s / never
    closed = _closed_after(bounded.port, payload, wait_s=LATE_S)
    # grpc's idle timer is jittered (+-20%: 0.8 s for a 1-s limit).
    assert closed is not None and 0.8 <= closed < LATE_S, closed


def test_idle_streams_are_ended(bounded):
    async def idle_streams():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            upload = channel.stream_unary("/edge.Test/Upload")

            async def one_chunk_then_silence():
                yield b"x"
                await asyncio.sleep(30)

            async def one():
                start = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await upload(one_chunk_then_silence())
                return e.value.code(), time.monotonic() - start, e.value.details()

            return await asyncio.gather(*(one() for _ in range(64)))

    results = _run(idle_streams())  # 64 streams over one connection: more than max_calls (8) are refused
    # grpcio's asyncio client reports a call refused before its first write went out as INTERNAL
    # "Internal error from Core" instead of the server's status (grpc/grpc#36066, fix pending in
    # grpc/grpc#43486): seen once on a fresh machine. It is a refusal; any other status is not.
    results = [(grpc.StatusCode.RESOURCE_EXHAUSTED if (code, details) == (grpc.StatusCode.INTERNAL,
                "Internal error from Core") else code, t, details) for code, t, details in results]  # fmt: skip
    codes = [code for code, _, _ in results]
    odd = {(code, details) for code, _, details in results
           if code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)}
    assert not odd, odd
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == LIMITS.max_calls
    assert all(LIMITS.idle_s <= t < LATE_S for code, t, _ in results if code == grpc.StatusCode.DEADLINE_EXCEEDED), results


def test_a_flood_of_empty_messages_is_cut_off(bounded):
    async def flood():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            async def empties():
                for _ in range(100_000):
                    yield b""
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.stream_unary("/edge.Test/Upload")(empties())
            return e.value

    error = _run(flood())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1000 messages" in error.details()


def test_bidirectional_streams_are_counted_unless_their_handler_counts_its_own(bounded):
    """Listen's messages are bounded by the core against the audio they carry (listen_min_frame_ms),
    so the generic cap must not cut a long live stream; reflection's streams keep it."""
    async def send(method: str):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            async def messages():
                for _ in range(LIMITS.max_messages + 500):
                    yield b"x"
            try:
                return [m async for m in channel.stream_stream(f"/edge.Test/{method}")(messages())]
            except grpc.aio.AioRpcError as e:
                return e.code()

    # The server ends the counted call with RESOURCE_EXHAUSTED (as test_a_flood_of_empty_messages_is_cut_off
    # sees for a client stream); a bidirectional client still sending may see its own core's INTERNAL first.
    assert _run(send("Counted")) in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
    assert _run(send("SelfCounted")) == [str(LIMITS.max_messages + 500).encode()]


def test_a_stream_within_the_limits_is_served(bounded):
    async def upload():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            async def chunks():
                for _ in range(50):
                    yield b"x" * 1000
                    await asyncio.sleep(0.02)
            return await channel.stream_unary("/edge.Test/Upload")(chunks())

    assert _run(upload()) == b"50"


def test_a_call_is_cut_at_the_servers_own_limit_and_its_work_stops(bounded):
    async def long_call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary("/edge.Test/Sleep")(b"30")  # no client deadline at all
            return e.value.code(), time.monotonic() - start

    before = len(bounded.cancelled)
    code, took = _run(long_call())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and LIMITS.max_call_s <= took < LATE_S, took
    _wait_for(lambda: len(bounded.cancelled) > before)  # the handler's sleep (30 s) was cancelled
    assert len(bounded.cancelled) == before + 1 and LIMITS.max_call_s - 0.05 <= bounded.cancelled[-1] < LATE_S


def test_a_client_deadline_and_a_client_that_leaves_cancel_the_work(unbounded):
    # grpc does both without help: no CallBudget on this server.
    async def calls():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{unbounded.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/edge.Test/Sleep")(b"30", timeout=0.5)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{unbounded.port}")
        call = channel.unary_unary("/edge.Test/Sleep")(b"30")
        async with asyncio.timeout(30):  # the handler is running: the client leaves only then
            while len(unbounded.started) < started + 2:  # the deadline call's, then this one
                await asyncio.sleep(0.01)
        await channel.close()
        return call

    before, started = len(unbounded.cancelled), len(unbounded.started)
    _run(calls())
    _wait_for(lambda: len(unbounded.cancelled) >= before + 2)
    assert len(unbounded.cancelled) == before + 2
    deadline_run, left_run = unbounded.cancelled[-2:]
    assert 0.45 <= deadline_run < LATE_S and left_run < LATE_S, unbounded.cancelled  # not the 30 s asked


def test_an_oversized_header_block_is_refused(bounded):
    async def call():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary("/edge.Test/Sleep")(b"0", metadata=(("x-big", "a" * 65536),))
            return e.value.code()

    assert _run(call()) == grpc.StatusCode.RESOURCE_EXHAUSTED
