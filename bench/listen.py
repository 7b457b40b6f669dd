"""Live-listening figures: WebSocket /listen streams at real speed against a served model.

    streams(url, n, seconds, window_s)   -> lag from the frame that completes a window to that
                                            window's message (p50/p95/max), windows, failures

Each stream sends 100 ms frames of 16 kHz PCM on the wall clock, then `end`, and reads every
message on its own thread; a stream counts as dropped when it does not get every window the
contract promises (one per hop, as /timeline counts them) and a normal close. `bench.run`'s
`listen` stage runs 16 streams for the latency and 64 for 60 s for memory and drops;
experiments/listen_memory.py runs them round after round.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from testkit import audiofiles as af

RATE = 16000
FRAME_S = 0.1
HOP_S = 0.5


def pcm(seconds: float) -> bytes:
    wave = np.clip(af.sine(440, seconds, RATE) + af.noise(seconds, RATE, 0.1), -1, 1)
    return (wave * 32767).astype("<i2").tobytes()


def streams(url: str, n: int, seconds: float, window_s: float) -> dict:
    """`n` concurrent real-speed streams of `seconds` of audio each, started 1/n of a frame apart."""
    from soundclassifier.timeline import window_count

    data = pcm(seconds)
    step = int(FRAME_S * RATE) * 2
    frames = [data[i : i + step] for i in range(0, len(data), step)]
    expected = window_count(len(data) // 2, round(window_s * RATE), round(HOP_S * RATE))
    lags: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        sent: dict[int, float] = {}
        windows = 0
        try:
            with connect(f"{url}/listen?sample_rate={RATE}&hop_s={HOP_S}", open_timeout=30) as ws:

                def on_message(raw: str) -> None:
                    nonlocal windows
                    m, t = json.loads(raw), time.monotonic()
                    if "error" in m:
                        with lock:
                            failures.append(f"stream {k}: {m}")
                    elif "top" in m:
                        windows += 1
                        frame = int(round(m["end_s"] / FRAME_S)) - 1  # the frame that completed it
                        if round(m["end_s"] - m["start_s"], 3) == round(window_s, 3) and frame in sent:
                            with lock:
                                lags.append(t - sent[frame])

                def read() -> None:
                    with contextlib.suppress(ConnectionClosed):  # an abnormal close: judged below
                        for raw in ws:  # ends at the server's normal close
                            on_message(raw)

                reader = threading.Thread(target=read)
                reader.start()
                time.sleep(k * FRAME_S / n)
                start = time.monotonic()
                for i, f in enumerate(frames):
                    time.sleep(max(0.0, start + i * FRAME_S - time.monotonic()))
                    sent[i] = time.monotonic()
                    ws.send(f)
                ws.send("end")
                reader.join(timeout=60)
                if ws.close_code != 1000 or windows != expected:
                    with lock:
                        failures.append(f"stream {k}: {windows}/{expected} windows, close {ws.close_code}")
        except Exception as e:  # noqa: BLE001 - a failed stream is a finding, not a crash
            with lock:
                failures.append(f"stream {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(lags) * 1000
    return {
        "streams": n, "seconds": seconds, "hop_s": HOP_S, "sample_rate": RATE, "windows": len(lags),
        "windows_expected_per_stream": expected, "dropped": len({f.split(":")[0] for f in failures}),
        "failures": failures[:5],
        **({"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max())} if len(ms) else {}),
    }  # fmt: skip
