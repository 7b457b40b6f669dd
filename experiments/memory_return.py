"""Does the served tree give back what hostile requests took? Its RSS warm, at its peak, and after.

    python -m experiments.memory_return MODEL_TAG [--clients 32] [--seconds 30]

Serves MODEL_TAG with the defaults (no allocator settings; idle gRPC streams end after 5 s instead
of 30, within the burst) and reports as JSON on stdout the tree's RSS once warm (every route, then
a 32-client /classify load), at its peak during a hostile burst (bench/hostile.py's cases) beside
64 idle gRPC streams and a 256 MB gRPC Timeline, and each second after until it is back within
1.25x of warm (at most 30 s). Added with 7b93750; tests/test_hostile.py checks the same return on
every run of the suite, and docs/design.md ("Memory that comes back") states what it found.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx

from bench.common import tree_rss_mb
from bench.hostile import LARGE_RATE, TIMEOUT_S, burst
from testkit import audiofiles as af

RETURN_WITHIN_S = 30.0


async def idle_grpc_streams(port: int, streams: int = 64, chunk: int = 4 << 20) -> Counter:
    """`streams` ClassifyStream and Timeline calls over 8 channels, one `chunk` each, then silence
    until the server's idle limit (SOUND_GRPC_IDLE_S) ends them; their status codes."""
    import grpc

    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    data = b"\1" * chunk

    async def one(i: int) -> str:
        stub = pb_grpc.SoundClassifierStub(channels[i % 8])
        timeline = i % 2 == 1

        async def chunks():
            yield pb.TimelineChunk(data=data) if timeline else pb.AudioChunk(data=data)
            await asyncio.Event().wait()

        try:
            await (stub.Timeline if timeline else stub.ClassifyStream)(chunks(), timeout=120)
            return "OK"
        except grpc.aio.AioRpcError as e:
            return e.code().name

    try:
        return Counter(await asyncio.gather(*(one(i) for i in range(streams))))
    finally:
        for channel in channels:
            await channel.close()


def large_grpc_timeline(port: int, total: int = 256 << 20) -> str:
    """A Timeline stream of `total` bytes: a 60-s WAV, then zeros its header does not announce."""
    import grpc

    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc

    wav = af.encode(af.noise(60.0, LARGE_RATE, seed=3), LARGE_RATE, "WAV", "PCM_16")

    def chunks():
        sent = 0
        for i in range(0, len(wav), 1 << 20):
            yield pb.TimelineChunk(data=wav[i : i + (1 << 20)], hop_s=2.5 if i == 0 else 0)
            sent += len(wav[i : i + (1 << 20)])
        while sent < total:
            yield pb.TimelineChunk(data=bytes(1 << 20))
            sent += 1 << 20

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return f"OK, {len(pb_grpc.SoundClassifierStub(channel).Timeline(chunks(), timeout=300).windows)} windows"
        except grpc.RpcError as e:
            return e.code().name


async def _classify_load(base_url: str, clients: int, seconds: float) -> None:
    """`clients` clients posting 5-s clips to /classify for `seconds`: a warm-up at load."""
    wav = af.wav_sine(seconds=5.0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def one() -> None:
            while time.perf_counter() < end:
                await client.post("/classify", files={"audio": ("w.wav", wav)})

        await asyncio.gather(*(one() for _ in range(clients)))


def memory_return(base_url: str, grpc_port: int, pid: int, clients: int = 32, seconds: float = 30.0) -> dict:
    """The served tree's RSS (MiB) once warm (every route, then a `clients`-client /classify load),
    at its peak while a `clients`-client hostile burst runs
    beside 64 idle gRPC streams and a 256 MB gRPC Timeline, right after, and each second after that
    for RETURN_WITHIN_S (stopping once back within 1.25x of warm)."""
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:  # warm: every route, full batches
        client.post("/classify", files={"audio": ("w.wav", af.wav_sine(seconds=5.0))}).raise_for_status()
        client.post("/timeline", files={"audio": ("w.wav", af.encode(af.noise(60.0, seed=1)))},
                    data={"hop_s": "1"}).raise_for_status()
    asyncio.run(_classify_load(base_url, clients, 10.0))  # and every batch size the load makes
    time.sleep(3)
    warm = tree_rss_mb(pid)
    peak, done = [warm], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb(pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def everything():
        grpc_idle = asyncio.create_task(idle_grpc_streams(grpc_port))
        grpc_large = asyncio.create_task(asyncio.to_thread(large_grpc_timeline, grpc_port))
        http = await burst(base_url, clients, seconds)
        return http, await grpc_idle, await grpc_large

    http, idle, large = asyncio.run(everything())
    done.set()
    sampler.join()
    last = time.monotonic()
    after = [(0.0, tree_rss_mb(pid))]
    while after[-1][1] > 1.25 * warm and time.monotonic() - last < RETURN_WITHIN_S:
        time.sleep(1.0)
        after.append((round(time.monotonic() - last, 1), tree_rss_mb(pid)))
    return {"warm_mb": warm, "peak_mb": peak[0], "after_mb": after[-1][1], "after_s": after[-1][0],
            "ratio": after[-1][1] / warm, "within": after[-1][1] <= 1.25 * warm, "http": http,
            "grpc_idle_streams": dict(idle), "grpc_large_timeline": large}


def main() -> None:
    import argparse
    import json

    from testkit.server import ServedService, free_port

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_tag")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    # Idle gRPC streams end after 5 s instead of 30, so they end within the burst.
    with ServedService(args.model_tag, grpc_port=free_port(), env={"SOUND_GRPC_IDLE_S": "5"}) as server:
        result = memory_return(server.base_url, int(server.grpc_port), server.process.pid, args.clients, args.seconds)
    result["http"] = {k: v for k, v in result["http"].items() if k != "per_case"}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
