"""SIGKILL one worker of a served tree while clients run: what do the clients and /livez see?

    python -m experiments.edge.killtest PORT ARBITER_PID 30            # /echo of tiny_service.py
    python -m experiments.edge.killtest PORT ARBITER_PID 30 classify   # /classify of the service

8 client threads post to ROUTE while /livez is polled every 0.5 s; after 3 s the first of
ARBITER_PID's workers is killed. Prints JSON to stdout: requests and errors after the kill, when
/livez first answered non-200 and 200 again, when a replacement worker appeared. Measured (with
BENTOML_CONTAINERIZED=true, where BentoML never respawns a worker): docs/edge.md, "A worker that dies".
"""

import json
import os
import signal
import sys
import threading
import time

import httpx
import psutil

from experiments.edge._tone import tone_bytes


def killtest(port: int, arbiter_pid: int, duration: float, route: str) -> dict:
    wav = tone_bytes() if route == "classify" else b""
    stop = time.monotonic() + duration
    results, livez = [], []

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            while time.monotonic() < stop:
                t = time.monotonic()
                try:
                    r = (c.post("/classify", files={"audio": ("a.wav", wav, "audio/wav")}) if route == "classify"
                         else c.post("/echo", json={"text": "hi"}))
                    results.append((t, r.status_code, time.monotonic() - t))
                except httpx.HTTPError as e:
                    results.append((t, type(e).__name__, time.monotonic() - t))

    def probe() -> None:
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                code = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            livez.append((t, code))
            time.sleep(0.5)

    def workers() -> list[int]:
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
    errors = [r for r in results if r[1] != 200]
    first_503 = next((round(t - kill_at, 2) for t, c in livez if t >= kill_at and c != 200), None)
    back_200 = None
    if first_503 is not None:
        back_200 = next((round(t - kill_at, 2) for t, c in livez if t >= kill_at + first_503 and c == 200), None)
    return {
        "workers_before": before,
        "killed": victim,
        "workers_after": timeline[-1][1],
        "requests": len(results),
        "requests_after_kill": len([r for r in results if r[0] >= kill_at]),
        "errors": [(round(t - kill_at, 2), c, round(d, 3)) for t, c, d in errors],
        "slowest_s": round(max(d for _, _, d in results), 3),
        "livez_first_non_200_after_kill_s": first_503,
        "livez_200_again_after_s": back_200,
        "replacement_worker_seen_after_s": next((dt for dt, ws in timeline if len(ws) == len(before) and ws != before), None),
        "livez_codes_after_kill": sorted({str(c) for t, c in livez if t >= kill_at}),
    }


if __name__ == "__main__":
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 40
    route = sys.argv[4] if len(sys.argv) > 4 else "echo"
    print(json.dumps(killtest(int(sys.argv[1]), int(sys.argv[2]), duration, route), indent=1))
