"""Where a served request's CPU goes: the HTTP floor against the whole service, at 32 clients.

    python -m experiments.floor                       # 3 rounds of 15 s each (~4 min)
    python -m experiments.floor --rounds 5 --seconds 20

Three servers up together (the default 2 workers each), each loaded in turn by wrk with the bench
clip (a 5 s 44.1 kHz WAV) while the other two are paused: the HTTP floor (bench/floor_service.py:
the same front door, no decoding, features or model), the service on its automatic engine, and the
service forced to bf16. For each: req/s and the served tree's CPU per answered request, printed per
round and as medians to stdout (recorded in docs/performance.md). The difference between the two
services is the engine's; what the floor costs is paid by both, which bounds how much a faster
engine can raise the served throughput. make bench now takes these figures in its interleaved
stage (the report's CPU per request table), beside the peers and the in-process pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

from bench import common, load
from soundclassifier.config import Settings
from testkit.server import ServedService, free_port

CLIENTS = 32


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--model", default=Settings().model_tag)
    a = p.parse_args(argv)
    body = common.multipart(common.clip_file())
    port = free_port()
    with contextlib.ExitStack() as stack:
        floor = common.http_floor(port)
        stack.callback(floor.stop)
        service = stack.enter_context(ServedService(a.model))
        bf16 = stack.enter_context(ServedService(a.model, env={"SOUND_PRECISION": "bf16"}))
        servers = {"http-floor": (f"http://127.0.0.1:{port}", floor.proc.pid),
                   "service": (service.base_url, service.process.pid),
                   "service-bf16": (bf16.base_url, bf16.process.pid)}
        for url, _ in servers.values():
            load.http_load(f"{url}/classify", *body, CLIENTS, 3.0)  # warm-up
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        for r, name in common.in_turn({name: pid for name, (_, pid) in servers.items()}, a.rounds):
            url, pid = servers[name]
            cpu = common.tree_cpu_s(pid)
            point = load.http_load(f"{url}/classify", *body, CLIENTS, a.seconds)
            ms = 1000 * (common.tree_cpu_s(pid) - cpu) / max(1, point.ok)
            figures[name].append((point.rps, ms))
            print(f"round {r + 1} {name:<13} {point.rps:7.1f} req/s  {ms:5.2f} ms CPU/request  "
                  f"errors {point.errors}", flush=True)
    print(f"\nmedians over {a.rounds} rounds, {CLIENTS} clients:")
    for name, rows in figures.items():
        print(f"  {name:<13} {statistics.median(r for r, _ in rows):7.1f} req/s  "
              f"{statistics.median(m for _, m in rows):5.2f} ms CPU/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
