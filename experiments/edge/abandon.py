"""A client that hangs up on a long /timeline upload: does the served tree stop working on it?

    python -m experiments.edge.abandon PORT ARBITER_PID 90      # a 90-min WAV (165 MB)

Writes a MINUTES-long 16 kHz noise WAV to the temp directory (once), uploads it to /timeline on
PORT, closes the connection after 3 s, then samples the CPU of ARBITER_PID's worker processes every
0.5 s for 12 s. Prints one JSON line to stdout: the upload's size and (seconds after the hang-up,
cores busy). Measured: docs/edge.md, "Clients that leave".
"""

import json
import socket
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import psutil

BOUNDARY = b"edgeboundary"


def long_wav(minutes: float) -> Path:
    path = Path(tempfile.gettempdir()) / f"edge-long-{minutes:g}min.wav"
    if not path.exists():
        sr = 16000
        x = (np.random.default_rng(0).standard_normal(int(minutes * 60 * sr)) * 3000).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(x.tobytes())
    return path


def abandon(port: int, arbiter: int, minutes: float) -> dict:
    body = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="audio"; filename="long.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + long_wav(minutes).read_bytes() + b"\r\n--" + BOUNDARY + b"--\r\n")
    workers = psutil.Process(arbiter).children()

    def cpu() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in workers)

    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /timeline HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=" + BOUNDARY
              + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    time.sleep(3)
    s.close()
    closed = time.monotonic()
    samples, prev, t_prev = [], cpu(), time.monotonic()
    while time.monotonic() - closed < 12:
        time.sleep(0.5)
        now, c = time.monotonic(), cpu()
        samples.append((round(now - closed, 1), round((c - prev) / (now - t_prev), 2)))
        prev, t_prev = c, now
    return {"upload_mb": round(len(body) / 2**20, 1), "cores_busy_after_hangup(t_s, cores)": samples}


if __name__ == "__main__":
    minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    print(json.dumps(abandon(int(sys.argv[1]), int(sys.argv[2]), minutes)))
