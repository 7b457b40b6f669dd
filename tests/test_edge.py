"""The HTTP edge (serving/edge.py) against real servers and raw sockets.

Bare uvicorn (testkit/edge_app.py, run as BentoML runs it) with 1-s limits for the timing cases,
then a real `bentoml serve` of a tiny service (testkit/edge_service.py) with no flags: the guarded
protocol is what BentoML's workers run, and keep-alive is the service's, not BentoML's 5 s.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from testkit.edge_probe import Background, open_probes, oversized_head, summary, watch
from testkit.server import free_port

LIMIT_S = 1.0
MIN_RATE = 100  # bytes/s a body must average past LIMIT_S
# Timers never fire early: each limit is checked exactly from below, and from above only against
# "never" (the probes are watched a few seconds past it), with room for a loaded machine.
SLACK_S = 3.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    port = free_port()
    cancel_log = tmp_path_factory.mktemp("edge") / "cancel.log"
    cancel_log.touch()
    server = Background([sys.executable, "-m", "testkit.edge_app", "--port", str(port), "--head", str(LIMIT_S),
                       "--body", str(LIMIT_S), "--send", str(LIMIT_S), "--keep-alive", "6",
                       "--min-rate", str(MIN_RATE),
                       "--cancel-log", str(cancel_log)], port)
    server.cancel_log = cancel_log
    yield server
    server.stop()


def _response(sock: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body), however the reads split it."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(bytes sent and not yet acknowledged, bytes received and not yet read by the application) of
    the 127.0.0.1 socket `local_port` -> `remote_port`, from /proc/net/tcp; None once it is gone."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                tx, rx = fields[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


def _wait_until_the_server_has_read(sock: socket.socket, timeout_s: float = 30.0) -> None:
    """Block until everything sent on `sock` has been read by the server process (its socket's
    receive queue is empty): the next bytes sent reach it in a read of their own."""
    client_port, server_port = sock.getsockname()[1], sock.getpeername()[1]
    deadline = time.monotonic() + timeout_s
    while _tcp_queues(client_port, server_port)[0] or _tcp_queues(server_port, client_port)[1]:
        assert time.monotonic() < deadline, "the server did not read what was sent"
        time.sleep(0.005)


def _wait_until_reset(sock: socket.socket, timeout_s: float = 30.0) -> None:
    """Block, reading nothing, until the server has reset `sock`'s connection (it leaves the table)."""
    client_port, server_port = sock.getsockname()[1], sock.getpeername()[1]
    deadline = time.monotonic() + timeout_s
    while _tcp_queues(client_port, server_port) is not None and _tcp_state(client_port, server_port) == "01":
        assert time.monotonic() < deadline, "the server never reset the connection"
        time.sleep(0.05)


def _tcp_state(local_port: int, remote_port: int) -> str | None:
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[3]  # "01": established
    return None


def _wait_for_lines(path: Path, count: int, timeout_s: float = 30.0) -> list[str]:
    """The file's lines once it has at least `count` (a handler logs its cancellation when its task
    next runs)."""
    deadline = time.monotonic() + timeout_s
    while len(lines := path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"{path} has {len(lines)} lines, waited for {count}"
        time.sleep(0.02)
    return lines


def _request(sock: socket.socket, path: str = "/echo", body: bytes = b"hi") -> bytes:
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    return _response(sock)


@pytest.mark.parametrize("kind", ["idle", "trickle", "stall"])
def test_slow_clients_are_closed_at_the_limit(edge, kind):
    probes = watch(open_probes("127.0.0.1", edge.port, kind, 64), seconds=LIMIT_S + 4, trickle_every=0.2)
    result = summary(probes)
    assert result["still_open"] == 0, result
    low, high = result["closed_after_s"]
    assert LIMIT_S - 0.05 <= low and high <= LIMIT_S + SLACK_S, result
    if kind == "trickle":  # part of a head arrived: it is told why
        assert result["answers"] == ["HTTP/1.1 408 Request Timeout"], result
    else:
        assert result["answers"] == [], result


def test_oversized_head_is_refused_before_it_is_read(edge):
    result = oversized_head("127.0.0.1", edge.port, 16 << 20, seconds=10)
    assert result["status"] == "HTTP/1.1 431 Request Header Fields Too Large", result
    # 64 KiB limit + one 256 KiB read on the server; the rest sits in the two sockets' buffers.
    assert result["bytes_sent_before_answer_or_close"] < 4 << 20, result
    assert result["seconds"] < 2, result


@pytest.mark.parametrize("first_request", [False, True], ids=["new-connection", "kept-alive"])
def test_a_head_over_the_limit_in_two_reads_is_refused(edge, first_request):
    """The head is counted from its first byte, whichever read brings it: on a kept-alive
    connection the parser's start of a message used to zero the count after the first read had
    been counted, so a 100 KB head sent in two halves got through (found by the fuzz suite)."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        if first_request:
            assert _request(sock).startswith(b"HTTP/1.1 200")
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(1000))  # ~100 KB
        half = len(lines) // 2
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n" + lines[:half])
        _wait_until_the_server_has_read(sock)  # so the rest comes in a second read
        with contextlib.suppress(OSError):  # the server may close while the rest is sent
            sock.sendall(lines[half:] + b"\r\nhi")
        assert _response(sock).startswith(b"HTTP/1.1 431")


@pytest.mark.served  # its own server, with a connection cap of 8
def test_connections_over_the_cap_get_503_and_a_close(tmp_path):
    """SOUND_MAX_CONNECTIONS per worker: 8 here. Eight idle connections held, the ninth is answered
    503 with Retry-After and closed before its request is read; once one closes, a new one is
    served."""
    port = free_port()
    server = Background([sys.executable, "-m", "testkit.edge_app", "--port", str(port), "--head", "60",
                         "--max-connections", "8"], port)
    try:
        held = []
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert _request(sock).startswith(b"HTTP/1.1 200")  # counted: the server has it
            held.append(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            answer = _response(sock)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"retry-after: 1" in answer.lower() and b"SOUND_MAX_CONNECTIONS" in answer, answer
            assert sock.recv(1) == b""  # closed
        held.pop().close()
        deadline = time.monotonic() + 30
        while True:  # the server sees the close in its own time
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                if _request(sock).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, "a freed connection slot was never reused"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_keep_alive_between_requests_is_governed_by_keep_alive_not_the_head_limit(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        time.sleep(3 * LIMIT_S)  # idle longer than the head limit: still a kept-alive connection
        assert _request(sock).startswith(b"HTTP/1.1 200")
        sock.settimeout(60)
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server at keep-alive (6 s), not at the head limit
        assert 6.0 - 0.05 <= time.monotonic() - start < 60


def test_a_slow_but_steady_upload_is_not_cut(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 800\r\n\r\n")
        for _ in range(8):  # 800 bytes over 3.2 s: never idle for the 1-s limit, 250 bytes/s
            sock.sendall(b"x" * 100)
            time.sleep(0.4)
        assert _response(sock).endswith(b"\r\n\r\n800")


def test_a_body_trickling_below_the_minimum_rate_is_cut(edge):
    """Issue 32: a byte every 0.1 s is never idle for 1 s, and was read until the request timeout.
    At 10 bytes/s against a minimum of 100, it is reset once it has had the 1-s grace; the same
    connection at 250 bytes/s is served (test_a_slow_but_steady_upload_is_not_cut)."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        start, cut = time.monotonic(), False
        while time.monotonic() - start < 30:
            try:
                sock.sendall(b"x")
            except OSError:  # reset by the server
                cut = True
                break
            time.sleep(0.1)
        if not cut:
            with contextlib.suppress(OSError):
                cut = sock.recv(1) == b""
    took = time.monotonic() - start
    assert cut and LIMIT_S <= took < 30, took


def test_the_server_reading_slowly_is_not_the_client_stalling(edge):
    body = b"x" * (4 << 20)  # far above uvicorn's 64 KiB high-water mark: reading pauses for 3 s
    r = httpx.post(f"http://127.0.0.1:{edge.port}/lazy", content=body, timeout=20)
    assert r.status_code == 200 and r.text == str(len(body))


def test_a_client_that_reads_none_of_its_answer_is_aborted(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        sent = time.monotonic()
        _wait_until_reset(sock)  # the server's write buffer stays full: reset after 1 s
        assert time.monotonic() - sent >= LIMIT_S - 0.05
        received, reset = 0, False
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            reset = True
    # A reset, not a close: what the server's kernel held is dropped, not left to trickle out.
    assert reset and received < 8 << 20


def test_a_client_that_goes_away_stops_its_work(edge):
    """The handler would sleep 30 s: it is cancelled when its client leaves, however late."""
    before = len(edge.cancel_log.read_text().splitlines())
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        _wait_until_the_server_has_read(sock)  # the request is the handler's now
        time.sleep(0.5)  # and it has slept a while
        closed_at = time.time()  # before the close: the server may cancel before this process runs again
    lines = _wait_for_lines(edge.cancel_log, before + 1)
    assert len(lines) == before + 1, lines
    _, ran_s, at = lines[-1].split()
    assert -0.001 <= float(at) - closed_at < 10.0 and float(ran_s) < 10.0, lines[-1]  # the log rounds to ms


def test_finished_requests_are_never_cancelled(edge):
    before = edge.cancel_log.read_text()
    with httpx.Client(base_url=f"http://127.0.0.1:{edge.port}") as client:
        for i in range(200):
            r = client.post("/echo", content=b"x" * i)
            assert r.status_code == 200 and r.text == str(i)
    assert edge.cancel_log.read_text() == before


# --- the same protocol in BentoML's own workers --------------------------------------------------

SERVED_LIMIT_S = 2.0
SERVED_DEADLINE_S = 4.0  # the service's traffic timeout


@pytest.fixture(scope="module")
def served(tmp_path_factory, bentoml_home):
    """`bentoml serve testkit.edge_service:EdgeTiny` with no flags: 2 workers, 2-s head/body limits."""
    port = free_port()
    cancel_log = tmp_path_factory.mktemp("served") / "cancel.log"
    cancel_log.touch()
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    server = Background([bentoml_cli, "serve", "testkit.edge_service:EdgeTiny", "--host", "127.0.0.1",
                         "--port", str(port)], port, ready_path="/readyz", start_timeout_s=90,
                        env={"EDGE_HEAD_S": str(SERVED_LIMIT_S), "EDGE_BODY_S": str(SERVED_LIMIT_S),
                             "EDGE_TIMEOUT_S": str(SERVED_DEADLINE_S), "EDGE_CANCEL_LOG": str(cancel_log), "BENTOML_DO_NOT_TRACK": "True"})
    server.cancel_log = cancel_log
    yield server
    server.stop()


@pytest.mark.slow
def test_bentoml_workers_close_slow_clients(served):
    probes = []
    for kind in ("idle", "trickle", "stall"):
        probes += open_probes("127.0.0.1", served.port, kind, 64)
    result = summary(watch(probes, seconds=SERVED_LIMIT_S + 5))
    assert result["still_open"] == 0, result
    assert result["closed_after_s"][1] <= SERVED_LIMIT_S + SLACK_S, result
    assert oversized_head("127.0.0.1", served.port, 16 << 20)["status"] == "HTTP/1.1 431 Request Header Fields Too Large"


@pytest.mark.slow
def test_bentoml_workers_keep_alive_for_75_s_without_a_flag(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        request = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 13\r\n\r\n{\"text\":\"hi\"}")
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(7)  # BentoML's own default (5 s) would have closed it by now
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.slow
def test_bentoml_handler_of_a_client_that_left_is_cancelled(served):
    before = len(served.cancel_log.read_text().splitlines())
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 15\r\n\r\n{\"seconds\": 30}")
        _wait_until_the_server_has_read(sock)
        time.sleep(0.5)
    closed_at = time.time()
    lines = _wait_for_lines(served.cancel_log, before + 1)  # the handler would sleep 30 s
    _, ran_s, at = lines[-1].split()
    assert float(at) - closed_at < 10.0 and float(ran_s) < 10.0, lines[-1]


@pytest.mark.slow
def test_bentoml_request_deadline_answers_504_and_cancels_the_handler(served):
    logged = len(served.cancel_log.read_text().splitlines())
    started = time.time()
    answer = httpx.post(f"http://127.0.0.1:{served.port}/slow", json={"seconds": 30}, timeout=30)
    assert answer.status_code == 504 and "4.0 seconds" in answer.json()["error"]
    assert SERVED_DEADLINE_S <= time.time() - started < SERVED_DEADLINE_S + 10
    # The handler logs its cancellation when the cancelled task next runs: maybe after the 504.
    lines = _wait_for_lines(served.cancel_log, logged + 1)
    _, ran_s, _ = lines[-1].split()
    assert SERVED_DEADLINE_S - 0.05 <= float(ran_s) < SERVED_DEADLINE_S + 10


@pytest.mark.slow
def test_bentoml_request_deadline_timers_go_with_their_requests(served):
    """BentoML 1.4's own deadline left each request's timer (and its context) on the event loop for
    the whole traffic timeout: 600 requests left 600 timers."""
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", limits=httpx.Limits(max_connections=1)) as client:
        before = client.post("/timers", json={}).json()  # one worker process answers on this connection
        for _ in range(600):
            assert client.post("/echo", json={"text": "hi"}).status_code == 200
        after = client.post("/timers", json={}).json()
    assert after - before < 20, (before, after)


def test_a_websocket_outlives_the_http_limits(edge):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{edge.port}/ws") as ws:
        time.sleep(3 * LIMIT_S)  # past the head and body limits of the request that upgraded
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
