"""Clients that reuse a connection just under httpx's 5 s keep-alive expiry: does the server race them?"""

import json
import random
import sys
import threading
import time

import httpx

port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ok, errors = [0], []
lock = threading.Lock()


def run(i):
    rnd = random.Random(i)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                r = c.post("/echo", json={"text": "hi"})
                r.raise_for_status()
                with lock:
                    ok[0] += 1
            except httpx.HTTPError as e:
                with lock:
                    errors.append(type(e).__name__)
            time.sleep(rnd.uniform(4.93, 5.0))


ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps({"port": port, "ok": ok[0], "errors": len(errors), "kinds": sorted(set(errors))}))
