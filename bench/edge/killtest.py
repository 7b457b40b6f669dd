"""Kill one worker of a served tree while clients run; report what clients and /livez saw."""

import json
import os
import signal
import sys
import threading
import time

import httpx
import psutil

from bench.edge._tone import tone_bytes

port, arbiter_pid = int(sys.argv[1]), int(sys.argv[2])
duration = float(sys.argv[3]) if len(sys.argv) > 3 else 40
ROUTE = sys.argv[4] if len(sys.argv) > 4 else "echo"  # echo (bench/edge/tiny_service.py) or classify
WAV = tone_bytes() if ROUTE == "classify" else b""
stop = time.monotonic() + duration
results, livez = [], []


def client():
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                r = (c.post("/classify", files={"audio": ("a.wav", WAV, "audio/wav")}) if ROUTE == "classify"
                     else c.post("/echo", json={"text": "hi"}))
                results.append((t, r.status_code, time.monotonic() - t))
            except httpx.HTTPError as e:
                results.append((t, type(e).__name__, time.monotonic() - t))


def probe():
    while time.monotonic() < stop:
        t = time.monotonic()
        try:
            code = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code
        except httpx.HTTPError as e:
            code = type(e).__name__
        livez.append((t, code))
        time.sleep(0.5)


def workers():
    return sorted(p.pid for p in psutil.Process(arbiter_pid).children() if p.status() != psutil.STATUS_ZOMBIE)


threads = [threading.Thread(target=client) for _ in range(8)] + [threading.Thread(target=probe)]
for t in threads:
    t.start()
time.sleep(3)
before = workers()
victim = before[0]
kill_at = time.monotonic()
os.kill(victim, signal.SIGKILL)
timeline = []
while time.monotonic() < stop:
    timeline.append((round(time.monotonic() - kill_at, 1), workers()))
    time.sleep(1)
for t in threads:
    t.join()
after_kill = [r for r in results if r[0] >= kill_at]
errors = [r for r in results if r[1] != 200]
first_503 = next((round(t - kill_at, 2) for t, c in livez if t >= kill_at and c != 200), None)
back_200 = None
if first_503 is not None:
    back_200 = next((round(t - kill_at, 2) for t, c in livez if t >= kill_at + first_503 and c == 200), None)
new_worker = next((dt for dt, ws in timeline if len(ws) == len(before) and ws != before), None)
print(
    json.dumps(
        {
            "workers_before": before,
            "killed": victim,
            "workers_after": timeline[-1][1],
            "requests": len(results),
            "requests_after_kill": len(after_kill),
            "errors": [(round(t - kill_at, 2), c, round(d, 3)) for t, c, d in errors],
            "slowest_s": round(max(d for _, _, d in results), 3),
            "livez_first_non_200_after_kill_s": first_503,
            "livez_200_again_after_s": back_200,
            "replacement_worker_seen_after_s": new_worker,
            "livez_codes_after_kill": sorted({str(c) for t, c in livez if t >= kill_at}),
        },
        indent=1,
    )
)
