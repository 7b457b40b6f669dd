"""Closed-loop load: N clients, each sending its next request as soon as the last one is answered.

HTTP goes through `wrk` (C, epoll; bench/post.lua posts a multipart body and counts statuses), which
costs the server's two cores almost nothing; when wrk is missing an asyncio httpx client does the
same job and the report says so. gRPC goes through grpc.aio clients in this process. Every
`measure_point` also reads, around the measured window only, the mean batch size the server used
(/metrics) and the CPU time the server and the client spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx

from bench.common import BatchCounters, batch_counters, percentiles_ms, tree_cpu_s
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc

LUA_SCRIPT = Path(__file__).with_name("post.lua")
REQUEST_TIMEOUT_S = 30.0

log = logging.getLogger("bench")


@dataclass
class Load:
    """One measured point: `clients` concurrent clients for `seconds`."""

    client: str  # wrk, httpx or grpc.aio
    clients: int
    seconds: float
    requests: int  # answered (any status), within the window
    ok: int  # 200 / gRPC OK
    statuses: dict[str, int]  # status code (HTTP) or gRPC code name -> count, including transport errors
    latency_ms: dict[str, float]  # mean, p50, p95, p99, max over all answered requests
    client_cpu_s: float
    server_cpu_s: float | None = None
    mean_batch: float | None = None  # clips per forward pass, from the server's /metrics
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code not in ("200", "OK"))

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": self.rps, "errors": self.errors}


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process, or of its waited-for children (RUSAGE_CHILDREN)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


# --- HTTP: wrk ------------------------------------------------------------------------------------


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        command = [
            "wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{max(1, round(seconds))}s",
            f"--timeout={int(REQUEST_TIMEOUT_S)}s", "-s", str(LUA_SCRIPT), url, "--", f.name, content_type,
        ]  # fmt: skip
        cpu = _cpu(resource.RUSAGE_CHILDREN)
        run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT_S + 30)
        cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout}\n{run.stderr}")
    out = json.loads(line.removeprefix("WRK_JSON "))
    statuses = dict(out["statuses"])
    for kind in ("connect", "read", "write", "timeout"):
        if out["errors"][kind]:
            statuses[f"socket-{kind}"] = out["errors"][kind]
    lat = out["latency_us"]
    return Load(client="wrk", clients=clients, seconds=out["duration_us"] / 1e6, requests=sum(out["statuses"].values()),
                ok=out["statuses"].get("200", 0), statuses=statuses, latency_ms={k: v / 1000.0 for k, v in lat.items()},
                client_cpu_s=cpu)


# --- HTTP: asyncio httpx (when wrk is missing) ---------------------------------------------------


def httpx_load(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> Load:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    def session():
        return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits)

    async def call(client: httpx.AsyncClient) -> tuple[str, bool]:
        try:
            r = await client.post(url, content=body, headers={"content-type": content_type})
        except httpx.HTTPError as e:
            return f"socket-{type(e).__name__}", False  # no answer: no latency to record
        return str(r.status_code), True

    return _closed_loop("httpx", "200", clients, seconds, session, call)


def http_load(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> Load:
    run = wrk if have_wrk() else httpx_load
    return run(url, body, content_type, clients, seconds)


# --- gRPC ------------------------------------------------------------------------------------------


def grpc_load(target: str, audio: bytes, clients: int, seconds: float) -> Load:
    request = pb.ClassifyRequest(audio=audio, filename="clip.wav")

    @contextlib.asynccontextmanager
    async def session():
        # One channel per client, as independent callers have: a channel is one HTTP/2 connection
        # (not shared with the others: grpc pools connections per process unless told not to),
        # and each connection reaches one of the server's worker processes.
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
        try:
            yield itertools.cycle(channels)
        finally:
            for channel in channels:
                await channel.close()

    async def call(channels: Iterator[grpc.aio.Channel]) -> tuple[str, bool]:
        channel = next(channels)
        try:
            await pb_grpc.SoundClassifierStub(channel).Classify(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return e.code().name, True
        return "OK", True

    return _closed_loop("grpc.aio", "OK", clients, seconds, session, call)


def _closed_loop(name: str, ok: str, clients: int, seconds: float, session, call) -> Load:
    """`clients` workers, each sending its next request when answered, for `seconds`.

    session(): an async context manager giving the shared client; call(client) -> (status, timed),
    where `timed` says whether the request's latency counts (a transport failure has none)."""

    async def main() -> tuple[list[float], Counter]:
        latencies: list[float] = []
        statuses: Counter = Counter()
        async with session() as client:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                while (start := time.perf_counter()) < end:
                    status, timed = await call(client)
                    statuses[status] += 1
                    if timed:
                        latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, statuses

    cpu, wall = _cpu(), time.perf_counter()
    latencies, statuses = asyncio.run(main())
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    return Load(client=name, clients=clients, seconds=wall, requests=len(latencies), ok=statuses.get(ok, 0),
                statuses=dict(statuses), latency_ms=percentiles_ms(latencies), client_cpu_s=cpu)


# --- one measured point against a served process -------------------------------------------------


def wait_idle(base_url: str | None, timeout_s: float = 20.0) -> BatchCounters | None:
    """Wait until no forward pass has run for 0.3 s: requests a load client abandoned when its time
    was up stay queued in the server, and must not run inside the next measured window."""
    if base_url is None:
        time.sleep(1.0)
        return None
    last, deadline = batch_counters(base_url), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = batch_counters(base_url)
        if now.passes == last.passes:
            return now
        last = now
    return last


def measure_point(
    run: Callable[[int, float], Load],
    clients: int,
    seconds: float,
    warmup_s: float,
    *,
    base_url: str | None = None,
    server_pid: int | None = None,
) -> Load:
    """Warm up, then measure; `base_url` adds the mean batch size, `server_pid` the server's CPU."""
    if warmup_s > 0:
        run(clients, warmup_s)
    before = wait_idle(base_url)
    cpu = tree_cpu_s(server_pid) if server_pid else None
    load = run(clients, seconds)
    if server_pid:
        load.server_cpu_s = tree_cpu_s(server_pid) - cpu
    after = wait_idle(base_url)
    if before is not None and after is not None:
        load.mean_batch = after.mean_since(before)
    log.info(
        "  %-8s %3d clients: %7.1f req/s  p50 %7.1f ms  p99 %7.1f ms  batch %s  errors %d %s",
        load.client, clients, load.rps, load.latency_ms["p50"], load.latency_ms["p99"],
        "-" if load.mean_batch is None else f"{load.mean_batch:.1f}", load.errors,
        {k: v for k, v in load.statuses.items() if k not in ("200", "OK")} or "",
    )  # fmt: skip
    return load
