"""Soak: many concurrent clients for a while, good and bad files mixed; every answer is checked.

    python -m bench.soak                                   # starts `bentoml serve` on sound-resnet:latest
    python -m bench.soak --model sound-resnet:abc123 --clients 64 --seconds 60
    python -m bench.soak --url http://127.0.0.1:3000       # against a server that is already running

A good file must be answered 200 with a classification (a 503 "overloaded" counts as an error);
a bad file must be refused with its documented status and error kind. Exit status 1 if anything
else happened. `make bench` runs this (64 clients, 60 s) as part of bench/run.py; the test suite
runs a 10-second version (tests/test_fuzz.py). Clients are asyncio httpx in this process: the
point is checking every answer, not sparing the server's CPU (bench/load.py's wrk does that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from bench.common import clip_file, percentiles_ms, tree_rss_mb
from testkit import audiofiles as af

CLIENTS = 64  # concurrent clients, each with one request in flight
SECONDS = 60.0  # how long the full soak lasts
GOOD_SHARE = 0.75  # share of requests that carry a valid file
TIMEOUT_S = 30.0

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    status: int  # the answer it must get
    error: str | None = None  # for refusals: the `error` kind the JSON body must name


def uploads() -> tuple[list[Upload], list[Upload]]:
    """(good, bad) files whose answers do not depend on the server's size or length limits."""
    good = [
        Upload("5s-44k.wav", clip_file("WAV"), 200),
        Upload("2s.flac", clip_file("FLAC", seconds=2.0, seed=1), 200),
        Upload("1s.ogg", clip_file("OGG", seconds=1.0, seed=2), 200),
        Upload("3s.mp3", clip_file("MP3", seconds=3.0, seed=3), 200),
        Upload("0.3s-22k.wav", clip_file("WAV", seconds=0.3, rate=22050, seed=4), 200),
        Upload("8bit.wav", af.wav_8bit(), 200),
        Upload("32ch.wav", af.wav_32_channels(seconds=0.5), 200),
        Upload("silence.wav", af.wav_silence(), 200),
    ]
    bad = [
        Upload("empty.wav", af.empty(), 400, "empty"),
        Upload("random.bin", af.random_bytes(), 415, "not_audio"),
        Upload("notes.txt", af.text(), 415, "not_audio"),
        Upload("truncated.wav", af.truncated_wav(), 400, "corrupt"),
        Upload("header-only.wav", af.header_only_wav(), 400, "corrupt"),
        Upload("zero-frames.wav", af.zero_frame_wav(), 400, "empty"),
        Upload("nan.wav", af.nan_float_wav(), 422, "non_finite"),
        Upload("inf.wav", af.inf_float_wav(), 422, "non_finite"),
    ]
    return good, bad


def check(upload: Upload, r: httpx.Response) -> str | None:
    """None if the answer is right for this file, else what is wrong with it."""
    if r.status_code != upload.status:
        return f"status {r.status_code}, expected {upload.status}: {r.text[:200]}"
    try:
        body = r.json()
    except ValueError:
        return f"not JSON: {r.text[:200]}"
    if upload.status == 200:
        top = body.get("top") if isinstance(body, dict) else None
        if not top or not all(0.0 <= s["probability"] <= 1.0 for s in top):
            return f"no classification: {r.text[:200]}"
        return None
    if body.get("error") != upload.error or not body.get("detail"):
        return f"refusal does not name the problem ({upload.error}): {r.text[:200]}"
    return None


async def soak(base_url: str, clients: int = CLIENTS, seconds: float = SECONDS, seed: int = 0,
               good_share: float = GOOD_SHARE) -> dict:
    """Run the soak against `base_url`/classify; returns counts, latencies and the first failures."""
    good, bad = uploads()
    counts: Counter = Counter()
    statuses: Counter = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.perf_counter() < end:
                is_good = rng.random() < good_share
                upload = rng.choice(good if is_good else bad)
                start = time.perf_counter()
                try:
                    r = await client.post("/classify", files={"audio": (upload.name, upload.data)})
                except httpx.HTTPError as e:
                    counts["transport_errors"] += 1
                    statuses[type(e).__name__] += 1
                    # The cause says what the socket saw (a reset, an early close) and the time says when.
                    failures.append(f"{upload.name}: {type(e).__name__}: {e} (cause {e.__cause__!r}, context "
                                    f"{e.__context__!r}, after {time.perf_counter() - start:.3f} s)")
                    continue
                statuses[str(r.status_code)] += 1
                problem = check(upload, r)
                kind = "good" if is_good else "bad"
                counts[f"{kind}_{'wrong' if problem else 'right'}"] += 1
                if problem:
                    failures.append(f"{upload.name}: {problem}")
                elif is_good:
                    latencies.append(time.perf_counter() - start)

        wall = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - wall
        ready = (await client.get("/readyz")).status_code
    errors = counts["good_wrong"] + counts["bad_wrong"] + counts["transport_errors"]
    return {
        "clients": clients,
        "seconds": wall,
        "requests": sum(statuses.values()),
        "good_ok": counts["good_right"],
        "good_failed": counts["good_wrong"],
        "bad_refused_correctly": counts["bad_right"],
        "bad_wrong": counts["bad_wrong"],
        "transport_errors": counts["transport_errors"],
        "errors": errors,
        "statuses": dict(statuses),
        "good_per_s": counts["good_right"] / wall,
        "good_latency_ms": percentiles_ms(latencies),
        "readyz_after": ready,
        "failures": failures[:20],
    }


def run_soak(base_url: str, clients: int = CLIENTS, seconds: float = SECONDS, seed: int = 0,
             server_pid: int | None = None) -> dict:
    """`soak` plus the server's memory (its whole process tree) before and after, when its pid is known."""
    rss = tree_rss_mb(server_pid) if server_pid else None
    result = asyncio.run(soak(base_url, clients, seconds, seed))
    if server_pid:
        result["server_rss_mb"] = {"before": rss, "after": tree_rss_mb(server_pid)}
    log.info(
        "  soak %d clients %.0f s: %d good ok, %d good failed, %d bad refused right, %d bad wrong, "
        "%d transport errors; good p50 %.0f ms p99 %.0f ms; /readyz %d",
        clients, result["seconds"], result["good_ok"], result["good_failed"], result["bad_refused_correctly"],
        result["bad_wrong"], result["transport_errors"], result["good_latency_ms"]["p50"],
        result["good_latency_ms"]["p99"], result["readyz_after"],
    )  # fmt: skip
    for failure in result["failures"][:5]:
        log.info("    %s", failure)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start `bentoml serve` on --model")
    parser.add_argument("--model", default="sound-resnet:latest", help="model tag to serve (default %(default)s)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="duration (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file mix (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.url:
        result = run_soak(args.url, args.clients, args.seconds, args.seed)
    else:
        from testkit.server import ServedService

        with ServedService(args.model) as server:
            result = run_soak(server.base_url, args.clients, args.seconds, args.seed, server.process.pid)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] or result["readyz_after"] != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
