"""Upload a long recording to /timeline, hang up after 3 s, and sample the workers' CPU use."""

import json
import socket
import sys
import tempfile
import time
import wave

import numpy as np
import psutil

port, arbiter = int(sys.argv[1]), int(sys.argv[2])
minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 20
path = f"{tempfile.gettempdir()}/edge-long-{minutes:g}min.wav"
try:
    open(path, "rb").close()
except FileNotFoundError:
    sr = 16000
    n = int(minutes * 60 * sr)
    x = (np.random.default_rng(0).standard_normal(n) * 3000).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())
data = open(path, "rb").read()
boundary = b"edgeboundary"
body = (
    b"--" + boundary + b'\r\nContent-Disposition: form-data; name="audio"; filename="long.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
)
workers = [p for p in psutil.Process(arbiter).children()]


def cpu():
    return sum(p.cpu_times().user + p.cpu_times().system for p in workers)


s = socket.create_connection(("127.0.0.1", port))
s.sendall(
    b"POST /timeline HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary="
    + boundary
    + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    + body
)
time.sleep(3)
s.close()
closed = time.monotonic()
samples = []
prev = cpu()
t_prev = time.monotonic()
while time.monotonic() - closed < 12:
    time.sleep(0.5)
    now, c = time.monotonic(), cpu()
    samples.append((round(now - closed, 1), round((c - prev) / (now - t_prev), 2)))
    prev, t_prev = c, now
print(json.dumps({"upload_mb": round(len(body) / 2**20, 1), "cores_busy_after_hangup(t_s, cores)": samples}))
