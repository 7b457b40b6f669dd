"""Raw-socket clients that misbehave at the HTTP edge, and a clock for when the server gives up.

    python -m testkit.edge_probe --port 3000 --kind idle --count 64 --watch 70

Each kind opens `count` connections and misbehaves on all of them; `watch` reports, per
connection, how long after it was opened the server closed it (None: still open at the end):
    idle      connects and sends nothing
    trickle   sends a request head one byte per second, never finishing it
    stall     sends a complete head announcing a 1 MB body, 100 bytes of it, then nothing
`oversized_head` streams a header block of N bytes and reports how much the server took before it
answered or closed. Used by tests/test_edge.py and quoted in docs/edge.md.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from testkit.server import check_servers_allowed

REPO_ROOT = Path(__file__).resolve().parent.parent

TRICKLE = b"POST %s HTTP/1.1\r\nHost: probe\r\nX-Slow: " + b"a" * 4096


@dataclass
class Probe:
    sock: socket.socket
    opened: float
    closed_after: float | None = None
    answer: bytes = b""
    to_send: bytes = b""
    sent: int = 0
    extra: dict = field(default_factory=dict)


def _connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    return s


def open_probes(host: str, port: int, kind: str, count: int, path: str = "/echo") -> list[Probe]:
    probes = []
    for _ in range(count):
        p = Probe(_connect(host, port), time.monotonic())
        if kind == "trickle":
            p.to_send = TRICKLE % path.encode()
        elif kind == "stall":
            p.sock.sendall(
                b"POST %s HTTP/1.1\r\nHost: probe\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1048576\r\n\r\n" % path.encode() + b"x" * 100
            )
        elif kind != "idle":
            raise ValueError(kind)
        probes.append(p)
    return probes


def watch(probes: list[Probe], seconds: float, trickle_every: float = 1.0) -> list[Probe]:
    """Wait up to `seconds` for the server to close each connection; trickle one byte per
    `trickle_every` seconds on the connections that have bytes left to send."""
    sel = selectors.DefaultSelector()
    for p in probes:
        sel.register(p.sock, selectors.EVENT_READ, p)
    end = time.monotonic() + seconds
    next_trickle = time.monotonic()
    open_count = len(probes)
    while open_count and time.monotonic() < end:
        now = time.monotonic()
        if now >= next_trickle:
            for p in probes:
                if p.closed_after is None and p.sent < len(p.to_send):
                    try:
                        p.sent += p.sock.send(p.to_send[p.sent:p.sent + 1])
                    except OSError:
                        pass  # noticed as a close by the read side below
            next_trickle = now + trickle_every
        for key, _ in sel.select(timeout=max(0.0, min(0.05, end - now))):
            p = key.data
            try:
                data = p.sock.recv(65536)
            except OSError:
                data = b""
            if data:
                p.answer += data
                continue
            p.closed_after = time.monotonic() - p.opened
            sel.unregister(p.sock)
            p.sock.close()
            open_count -= 1
    for p in probes:
        if p.closed_after is None:
            sel.unregister(p.sock)
            p.sock.close()
    sel.close()
    return probes


def summary(probes: list[Probe]) -> dict:
    closed = [p.closed_after for p in probes if p.closed_after is not None]
    statuses = sorted({p.answer.split(b"\r\n", 1)[0].decode(errors="replace") for p in probes if p.answer})
    return {
        "connections": len(probes),
        "closed": len(closed),
        "still_open": len(probes) - len(closed),
        "closed_after_s": [round(min(closed), 2), round(max(closed), 2)] if closed else None,
        "answers": statuses,
    }


def oversized_head(host: str, port: int, total: int, chunk: int = 65536, seconds: float = 30.0) -> dict:
    """Stream `GET / ` + a header of `total` bytes; how many bytes went out before the server
    answered or closed, what it answered, and how long it took."""
    s = socket.create_connection((host, port), timeout=seconds)
    start = time.monotonic()
    sent, answer = 0, b""
    s.sendall(b"GET /livez HTTP/1.1\r\nHost: probe\r\nX-Big: ")
    s.setblocking(False)
    body = b"a" * chunk
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    closed = False
    while time.monotonic() - start < seconds and not closed:
        for _, events in sel.select(timeout=0.5):
            if events & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    closed = True
                    break
                answer += data
            if events & selectors.EVENT_WRITE and sent < total:
                try:
                    sent += s.send(body[: min(chunk, total - sent)])
                except OSError:
                    closed = True
                    break
        if sent >= total and not closed:
            try:
                s.send(b"\r\n\r\n")
            except OSError:
                pass
            sel.modify(s, selectors.EVENT_READ)
            sent += 1  # the terminator: stop writing
    sel.close()
    s.close()
    return {
        "header_bytes_offered": total,
        "bytes_sent_before_answer_or_close": min(sent, total),
        "status": answer.split(b"\r\n", 1)[0].decode(errors="replace") or None,
        "closed": closed,
        "seconds": round(time.monotonic() - start, 2),
    }


class Background:
    """A server process in its own session, up once `ready_path` answers below 500; output in a file."""

    def __init__(self, argv: list[str], port: int, env: dict | None = None, cwd: Path = REPO_ROOT,
                 ready_path: str = "/", start_timeout_s: float = 60.0):
        check_servers_allowed(" ".join(map(str, argv[:4])))
        self.port = port
        self.log = tempfile.TemporaryFile()
        # A private BENTOML_HOME: `bentoml serve` empties <home>/prometheus_multiproc_dir as it starts,
        # which erased the /metrics of every other server on the same home (the tests' own).
        home = {"BENTOML_HOME": tempfile.mkdtemp(prefix="edge-bentoml-home-")}
        self.proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **home, **(env or {})},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        output = self.output()
        self.stop()
        raise TimeoutError(output)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers left in the group
        except ProcessLookupError:
            pass
        self.log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kind", choices=["idle", "trickle", "stall", "oversized"], required=True)
    ap.add_argument("--count", type=int, default=64, help="connections (default 64)")
    ap.add_argument("--path", default="/echo", help="route the requests go to (default /echo)")
    ap.add_argument("--watch", type=float, default=70.0, help="seconds to wait for closes (default 70)")
    ap.add_argument("--bytes", type=int, default=16 << 20, help="oversized: header bytes (default 16 MiB)")
    args = ap.parse_args()
    if args.kind == "oversized":
        print(json.dumps(oversized_head(args.host, args.port, args.bytes, seconds=args.watch)))
        return
    probes = open_probes(args.host, args.port, args.kind, args.count, args.path)
    print(json.dumps({"kind": args.kind, **summary(watch(probes, args.watch))}))


if __name__ == "__main__":
    main()
