"""Clients that reuse a connection just under httpx's 5 s keep-alive expiry: does the server race them?

    python -m experiments.edge.race PORT 64 60      # 64 clients for 60 s against /echo on PORT

Each client posts to /echo (experiments/edge/tiny_service.py, or testkit/edge_service.py with the
edge protocol installed), then waits 4.93-5.0 s and reuses its connection. Prints one JSON line to
stdout: requests answered, errors and their kinds. Measured: docs/edge.md, "Keep-alive".
"""

import json
import random
import sys
import threading
import time

import httpx


def race(port: int, clients: int, seconds: float) -> dict:
    ok, errors = [0], []
    lock = threading.Lock()

    def run(i: int) -> None:
        rnd = random.Random(i)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    c.post("/echo", json={"text": "hi"}).raise_for_status()
                    with lock:
                        ok[0] += 1
                except httpx.HTTPError as e:
                    with lock:
                        errors.append(type(e).__name__)
                time.sleep(rnd.uniform(4.93, 5.0))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"port": port, "ok": ok[0], "errors": len(errors), "kinds": sorted(set(errors))}


if __name__ == "__main__":
    print(json.dumps(race(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))))
