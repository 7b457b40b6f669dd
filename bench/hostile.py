"""A short hostile and large-upload burst, for memory: does the served tree give back what the
requests took?

The cases are those of tests/test_hostile.py (a FLAC decompression bomb, a timeline over its window
budget and one over its work budget, a rate above 192 kHz, malformed text fields, an overlong file
name) plus the largest uploads the limits allow: a
valid clip near the samples budget, the same file as a timeline, and an upload over the size limit.
Their sizes come from `Settings`, so they stay at the edge if the limits change. Every answer is
checked against the status (and error kind) the service documents for it; the memory it leaves is
the point, the check keeps the burst honest.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import soundfile as sf

from soundclassifier.config import Settings
from testkit import audiofiles as af

TIMEOUT_S = 120.0
LARGE_RATE = 44100

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    files: list[tuple[str, tuple[str, bytes]]]
    statuses: tuple[int, ...]  # the answers it may get
    error: str | None = None  # the `error` kind a refusal must name
    data: dict[str, str] = field(default_factory=dict)
    closed_early_ok: bool = False  # refused before the body was read: the connection may close mid-upload


def constant_flac(seconds: float, rate: int, channels: int) -> bytes:
    """Constant samples: FLAC stores them in almost nothing (a decompression bomb)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        block = np.full((rate, channels), 0.25, dtype=np.float32)
        for _ in range(int(seconds)):
            f.write(block)
    return buf.getvalue()


def cases(settings: Settings | None = None) -> list[Case]:
    s = settings or Settings()
    # Over the samples budget by 2x in a tiny file; a timeline over its window budget at hop 0.25 s.
    bomb_seconds = max(1, int(2 * s.max_samples / (192_000 * 8)) + 1)
    bomb = constant_flac(bomb_seconds, 192_000, 8)
    windows_seconds = int((s.max_timeline_windows + 1000) * 0.25)
    too_many_windows = constant_flac(windows_seconds, 8000, 1)
    # Over the timeline's work budget (samples at the file's rate, each window counted whole) at
    # 192 kHz x 8 channels in 0.25-s hops, within its window budget; a rate above 192 kHz.
    window = 5 * 192_000 * 8
    work_seconds = int(s.max_timeline_work_samples / window * 0.25) + 10
    too_much_work = constant_flac(work_seconds, 192_000, 8)
    ultrasonic = af.encode(af.sine(440.0, 0.5, 768_000), 768_000, "WAV", "PCM_16")
    # The largest valid clip: 90% of the tightest of the samples, duration and upload limits.
    seconds = 0.9 * min(s.max_samples / LARGE_RATE, s.max_clip_seconds, s.max_upload_mb * 2**20 / (2 * LARGE_RATE))
    large = af.encode(af.noise(seconds, LARGE_RATE, seed=1), LARGE_RATE, "WAV", "PCM_16")
    oversize = b"\0" * int((s.max_upload_mb + 4) * 2**20)
    wav = af.wav_sine(seconds=1.0)
    return [
        Case("bomb", "/classify", [("audio", ("bomb.flac", bomb))], (413,), "too_large"),
        Case("4 bombs in a batch", "/classify_batch", [("audio", (f"b{i}.flac", bomb)) for i in range(4)], (200,)),
        Case("timeline over its window budget", "/timeline", [("audio", ("long.flac", too_many_windows))], (413,),
             "too_long", {"hop_s": "0.25"}),
        Case("timeline over its work budget", "/timeline", [("audio", ("wide.flac", too_much_work))], (413,),
             "too_large", {"hop_s": "0.25"}),
        Case("768 kHz upload", "/timeline", [("audio", ("ultra.wav", ultrasonic))], (415,), "unsupported"),
        Case("5000-digit top_k", "/classify", [("audio", ("a.wav", wav))], (400,), "bad_request", {"top_k": "9" * 5000}),
        Case("nested top_k", "/spectrogram", [("audio", ("a.wav", wav))], (400,), "bad_request", {"top_k": "[" * 100_000}),
        Case("5000-digit hop_s", "/timeline", [("audio", ("a.wav", wav))], (400,), "bad_request", {"hop_s": "9" * 5000}),
        Case("nested extra field", "/classify_batch", [("audio", ("a.wav", wav))], (400,), "bad_request",
             {"anything": "[" * 100_000}),
        Case("overlong file name", "/timeline", [("audio", ("a" * 300 + ".wav", wav))], (400,), "bad_request"),
        Case(f"{seconds:.0f} s clip ({len(large) >> 20} MiB)", "/classify", [("audio", ("large.wav", large))], (200,)),
        Case(f"{seconds:.0f} s timeline", "/timeline", [("audio", ("large.wav", large))], (200,)),
        Case(f"upload over {s.max_upload_mb:g} MB", "/classify", [("audio", ("big.wav", oversize))], (413,),
             "too_large", closed_early_ok=True),
    ]  # fmt: skip


def check(case: Case, r: httpx.Response) -> str | None:
    """None if the answer is right for this case, else what is wrong with it."""
    if r.status_code not in case.statuses:
        return f"{case.name}: status {r.status_code}, expected {case.statuses}: {r.text[:200]}"
    if case.error is not None:
        try:
            kind = r.json().get("error")
        except ValueError:
            return f"{case.name}: not JSON: {r.text[:200]}"
        if kind != case.error:
            return f"{case.name}: error {kind!r}, expected {case.error!r}"
    return None


async def burst(base_url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    """`clients` concurrent clients, each sending the cases in its own random order, for `seconds`
    (requests in progress when time is up are finished)."""
    all_cases = cases()
    statuses: Counter = Counter()
    per_case: Counter = Counter()
    wrong: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            order = rng.sample(all_cases, len(all_cases))
            n = 0
            while time.perf_counter() < end:
                case = order[n % len(order)]
                n += 1
                per_case[case.name] += 1
                try:
                    r = await client.post(case.route, files=case.files, data=case.data)
                except httpx.HTTPError as e:
                    if case.closed_early_ok and isinstance(e, (httpx.WriteError, httpx.RemoteProtocolError,
                                                                httpx.ReadError)):
                        statuses["closed early"] += 1
                        continue
                    statuses[type(e).__name__] += 1
                    wrong.append(f"{case.name}: {type(e).__name__}: {e}")
                    continue
                statuses[str(r.status_code)] += 1
                if problem := check(case, r):
                    wrong.append(problem)

        wall = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - wall
        ready = (await client.get("/readyz")).status_code
    return {"clients": clients, "seconds": wall, "requests": sum(statuses.values()), "statuses": dict(statuses),
            "per_case": dict(per_case), "wrong": len(wrong), "failures": wrong[:10], "readyz_after": ready}


def run_burst(base_url: str, clients: int, seconds: float) -> dict:
    result = asyncio.run(burst(base_url, clients, seconds))
    log.info("  hostile burst: %d clients, %.0f s, %d requests %s, %d wrong; /readyz %d", clients, result["seconds"],
             result["requests"], result["statuses"], result["wrong"], result["readyz_after"])
    for failure in result["failures"][:3]:
        log.info("    %s", failure)
    return result
