"""Issue 20's latency figure: N concurrent real-speed WebSocket /listen streams for 20 s; the lag from
sending the frame that completes a window to receiving that window's message (default settings).

    python -m bench.listen MODEL_TAG [N]      # N streams (default 16); not yet a stage of bench/run.py
"""

import json
import os
import sys
import threading
import time

import numpy as np
from websockets.sync.client import connect

from testkit import audiofiles as af
from testkit.server import ServedService

RATE = 16000
TAG = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 16
SECONDS = 20
x = (
    (np.clip(af.sine(440, SECONDS, RATE) + af.noise(SECONDS, RATE, 0.1), -1, 1) * 32767)
    .astype("<i2")
    .tobytes()
)
F = int(0.1 * RATE) * 2
frames = [x[i : i + F] for i in range(0, len(x), F)]
lags = []
errors = []


def stream(url, k):
    sent = {}
    try:
        with connect(url) as ws:

            def read():
                try:
                    while True:
                        m = json.loads(ws.recv(timeout=60))
                        t = time.monotonic()
                        if "top" in m and round(m["end_s"] - m["start_s"], 3) == 5.0:
                            lags.append(t - sent[int(round(m["end_s"] / 0.1)) - 1])
                        if "error" in m:
                            errors.append(m)
                except Exception:
                    pass

            r = threading.Thread(target=read)
            r.start()
            time.sleep(k * 0.1 / N)
            start = time.monotonic()
            for i, f in enumerate(frames):
                time.sleep(max(0, start + i * 0.1 - time.monotonic()))
                sent[i] = time.monotonic()
                ws.send(f)
            ws.send("end")
            r.join()
    except Exception as e:
        errors.append(repr(e))


with ServedService(TAG) as s:
    url = f"ws://127.0.0.1:{s.port}/listen?sample_rate={RATE}"
    ts = [threading.Thread(target=stream, args=(url, k)) for k in range(N)]
    [t.start() for t in ts]
    [t.join() for t in ts]
print(
    f"{N} streams: {len(lags)} windows, p50 {np.percentile(lags, 50) * 1000:.1f} ms, p95 {np.percentile(lags, 95) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms, errors {errors[:3]}, load {os.getloadavg()}"
)
