"""Where a served /classify request's CPU goes, at 32 clients: py-spy over the served workers.

    python -m experiments.profile_request MODEL_TAG [--seconds 30] [--svg docs/profile-classify-32.svg] [--raw FILE]

Starts `bentoml serve` with the defaults on a free port, loads it with wrk (32 connections, the
5-s 44.1 kHz WAV clip `make bench` posts), and records the workers with py-spy (`--subprocesses`,
100 samples a second): once as raw stacks, which it sorts into the parts of a request, and once
as a flame graph (the SVG). A stack counts for the part of its innermost frame that names one
(the engine's infer call, the STFT, the resampler, the decoder, the multipart parser, BentoML's
app, the HTTP server and asyncio...); stacks of threads that wait (an idle thread pool, an event
loop in epoll, the heap trimmer) are left out, told by their innermost frame, native ones included
(`--native`). It prints each part's share of the active samples
and the load's requests per second.

What it cannot see: threads that are not Python's (OpenVINO runs a lone clip's forward pass on
its own threads), so the engine's share is a floor; and py-spy's own sampling costs the workers
a little. docs/performance.md records a run with its command and commit.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import load as loads
from bench.common import clip_file, multipart
from testkit.server import ServedService

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 32

# A request's parts, each named by the frames that belong to it (file or function names).
PARTS = [
    ("engine (OpenVINO / ONNX Runtime infer)", ("InferRequest.infer", "openvino", "onnxruntime", "InferenceSession")),
    ("resample (soxr)", ("ResampleStream", "soxr", "resample")),
    ("features (STFT, mel, log)", ("features.py", "pocketfft", "_raw_fft", "numpy/fft")),
    ("decode (libsndfile)", ("soundfile", "audio.py")),
    ("upload guard", ("http_guard.py",)),
    ("multipart parse", ("formparsers", "python_multipart", "multipart")),
    ("answer (pydantic, JSON)", ("pydantic", "predictions.py", "json")),
    ("metrics (prometheus)", ("prometheus", "serving/metrics.py", "instruments.py")),
    ("batcher", ("serving/batching.py", "dispatcher.py")),
    ("pipeline and classifier", ("pipeline.py", "classifier.py")),
    ("garbage collection", ("gc_collect", "gc.collect")),
    ("logging", ("logging/", "access.py")),
    ("BentoML's app", ("bentoml/", "_bentoml_impl", "_bentoml_sdk")),
    ("HTTP server (uvicorn, starlette, the edge)", ("uvicorn", "h11", "httptools", "starlette", "serving/edge.py")),
    ("asyncio event loop", ("asyncio", "uvloop")),
]
# Innermost frames of a thread that waits, Python's and native (libc, libpython, libuv). The
# native ones matter: py-spy's own idle test missed an event loop blocked in epoll, and its
# innermost Python frame (uvloop's Runner.run) also runs every callback; so the stacks are
# recorded with --native and a wait is told by the innermost frame py-spy could name.
WAITING = ("_worker", "Condition.wait", "Event.wait", "Queue.get", "select", "epoll", "sleep", "HeapTrimmer",
           "PyThread_acquire_lock", "pthread_cond_", "futex", "sem_wait", "sem_timedwait", "take_gil",
           "__poll", "nanosleep", "accept")
UNNAMED = re.compile(r"^0x[0-9a-f]+ \(")  # a native frame py-spy found no symbol for


def part_of(frames: list[str]) -> str | None:
    """The part a stack's CPU belongs to (its innermost frame that names one), None if it waits.
    The leading "process ..." frames (command lines) name no part."""
    frames = [f for f in frames if not UNNAMED.match(f) and not f.startswith("process ")]
    if any(k in f for f in frames for k in PARTS[0][1]):
        # A thread in the engine's infer call mostly waits for the engine's own threads, which
        # py-spy does not see: its samples stand for theirs (a floor, as the docstring says).
        return PARTS[0][0]
    if not frames or any(w in frames[-1] for w in WAITING):
        return None
    for frame in reversed(frames):
        for name, keys in PARTS:
            if any(k in frame for k in keys):
                return name
    return "other"


def shares(raw: Path) -> tuple[dict[str, float], int, int]:
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        total += int(n)
        if (part := part_of(stack.split(";"))) is not None:
            counts[part] += int(n)
    active = sum(counts.values())
    return {k: v / active for k, v in counts.most_common()}, active, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="model tag in the BentoML store (BENTOML_HOME)")
    p.add_argument("--seconds", type=float, default=30.0, help="each recording's length")
    p.add_argument("--svg", type=Path, default=None, help="write the flame graph here")
    p.add_argument("--raw", type=Path, default=None, help="keep the raw stacks here (for another sorting)")
    args = p.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    body, content_type = multipart(clip_file())
    with tempfile.TemporaryDirectory() as tmp, ServedService(args.model, grpc_port="0") as server, \
            ThreadPoolExecutor(1) as pool:
        url = f"{server.base_url}/classify"
        loads.wrk(url, body, content_type, CLIENTS, 5)  # warm-up
        load = pool.submit(loads.wrk, url, body, content_type, CLIENTS, 2 * args.seconds + 15)
        threading.Event().wait(5)  # past the load's ramp-up
        record = [py_spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--native", "-r", "100",
                  "-d", str(int(args.seconds))]
        raw = Path(tmp) / "raw.txt"
        subprocess.run([*record, "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        if args.svg:
            subprocess.run([*record, "-f", "flamegraph", "-o", str(args.svg)], check=True, capture_output=True)
            # Paths relative to the project, as the docs write them (the SVG names every command line).
            args.svg.write_text(args.svg.read_text().replace(f"{ROOT}/", "").replace(str(ROOT), "."))
        done = load.result()
        parts, active, total = shares(raw)
        if args.raw:
            shutil.copy(raw, args.raw)
    print(f"{CLIENTS} clients: {done.rps:.1f} req/s, statuses {done.statuses}; {active} of {total} samples active")
    for name, share in parts.items():
        print(f"{share:6.1%}  {name}")


if __name__ == "__main__":
    main()
