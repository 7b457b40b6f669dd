"""Live streams round after round: does the served tree's memory stop growing?

    python -m experiments.listen_memory MODEL_TAG [N]                # N real-speed streams for 20 s
    python -m experiments.listen_memory MODEL_TAG 64 --rounds 14     # and each worker's RSS after every round

Serves MODEL_TAG with the defaults and runs N real-speed /listen streams (bench/listen.py, as make
bench's listen stage does) for a round, or for --rounds rounds, printing after each the streams
dropped, the p95 lag and each worker's RSS (MiB). Was `python -m bench.listen` until 2026-12-06;
docs/performance.md ("Live streams and memory") records what it found.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from bench.common import process_tree
from bench.listen import streams
from testkit.server import ServedService


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("streams", type=int, nargs="?", default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="audio per stream and round")
    p.add_argument("--rounds", type=int, default=1, help="rounds of streams; the workers' RSS is printed after each")
    a = p.parse_args(argv)
    with ServedService(a.model) as server:
        window_s = httpx.post(f"{server.base_url}/info").json()["feature_settings"]["clip_seconds"]
        ws_url = server.base_url.replace("http://", "ws://")
        for r in range(a.rounds):
            result = streams(ws_url, a.streams, a.seconds, window_s)
            if a.rounds == 1:
                print(json.dumps(result, indent=1))
                break
            rss = [round(w.memory_info().rss / 2**20) for w in process_tree(server.process.pid)[1:]]
            print(f"round {r + 1}: {result['dropped']} dropped, p95 lag {result.get('p95_ms', float('nan')):.1f} ms, "
                  f"worker RSS MiB {rss}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
