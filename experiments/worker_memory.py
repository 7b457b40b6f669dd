"""Does a worker's memory settle under load, or keep growing? Each process's USS once warm and after
each of several 32-client loads.

    python -m experiments.worker_memory MODEL_TAG [--loads 8] [--seconds 15] [--source-root DIR]

Serves MODEL_TAG with the defaults (2 workers here) from the checkout at DIR (default: this one;
a `git worktree` of another revision measures that revision), warms it with a 3-s load, then runs
`--loads` closed-loop loads of 32 clients posting the 5-s clip, and prints each process's USS in
MiB (the `bentoml serve` parent first) after the warm-up and 8 s after each load. Recorded in
docs/performance.md, "The memory a worker needs".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil

from bench import load as loads
from bench.common import clip_file, multipart, process_tree
from testkit.server import REPO_ROOT, ServedService

CLIENTS = 32


def uss_mib(pid: int) -> list[int]:
    found = []
    for p in process_tree(pid):
        try:
            found.append(round(p.memory_full_info().uss / 2**20))
        except psutil.Error:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_tag")
    parser.add_argument("--loads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--source-root", type=Path, default=REPO_ROOT)
    args = parser.parse_args()
    body = multipart(clip_file())
    with ServedService(args.model_tag, source_root=args.source_root.resolve()) as server:
        pid, url = server.process.pid, server.base_url
        load = loads.http_load(f"{url}/classify", *body, CLIENTS, 3.0)
        loads.wait_idle(url)
        time.sleep(8)
        print(f"warm: USS MiB {uss_mib(pid)}", flush=True)
        for i in range(1, args.loads + 1):
            load = loads.http_load(f"{url}/classify", *body, CLIENTS, args.seconds)
            loads.wait_idle(url)
            time.sleep(8)
            print(f"after load {i} ({load.rps:.0f} req/s): USS MiB {uss_mib(pid)}", flush=True)


if __name__ == "__main__":
    main()
