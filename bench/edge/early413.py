import os
import sys
import time

import httpx

B = f"http://127.0.0.1:{sys.argv[1]}"
body = os.urandom(1 << 20) * 200  # 200 MiB
for _ in range(3):
    t = time.monotonic()
    try:
        r = httpx.post(
            B + "/classify",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=x"},
            timeout=120,
        )
        print(r.status_code, r.headers.get("connection"), round(time.monotonic() - t, 2), "s")
    except httpx.HTTPError as e:
        print("error", type(e).__name__, e, round(time.monotonic() - t, 2), "s")

    # chunked (no Content-Length): refused while reading
    def gen():
        for _ in range(200):
            yield body[: 1 << 20]

    t = time.monotonic()
    try:
        r = httpx.post(
            B + "/classify",
            content=gen(),
            headers={"content-type": "multipart/form-data; boundary=x"},
            timeout=120,
        )
        print("chunked", r.status_code, r.headers.get("connection"), round(time.monotonic() - t, 2), "s")
    except httpx.HTTPError as e:
        print("chunked error", type(e).__name__, e, round(time.monotonic() - t, 2), "s")
