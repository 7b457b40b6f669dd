"""A/B of served variants: all up at once, loaded in turn in a random order, round after round.

    python -m experiments.ab --clients 1 --rounds 10 before@HEAD~1 after
    python -m experiments.ab --clients 1 on "off:BENTOML_CONFIG_OPTIONS=services.logging.access.enabled=false"

A variant is NAME[@REV][:ENV=VALUE ...]: REV is a git revision served from a temporary worktree
(default: this checkout as it is), the ENV assignments are added to the server's environment. This
machine's speed drifts by more than most changes are worth within minutes, so a single comparison
means little; this compares the variants under the same conditions in every round (the ones not under
load paused, as in `make bench`'s interleaved stage) and prints, per variant, the medians over rounds
and, against the first variant, the median paired difference of p50 and how many rounds it was lower.
docs/performance.md and docs/design.md record its figures as "A/B", each with its command.
`make bench` does not run it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench import load as loads
from bench.common import clip_file, in_turn, multipart, settle
from testkit.server import REPO_ROOT, ServedService


@dataclass(frozen=True)
class Variant:
    name: str
    rev: str | None
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, _, assignments = text.partition(":")
        name, _, rev = head.partition("@")
        env = dict(a.split("=", 1) for a in assignments.split() if a)
        return cls(name, rev or None, env)


@contextlib.contextmanager
def checkout(rev: str | None):
    """The source tree of `rev` (a temporary git worktree), or this checkout for None."""
    if rev is None:
        yield REPO_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=Variant.parse, help="NAME[@REV][:ENV=VALUE ...]")
    parser.add_argument("--model", default="sound-resnet:latest")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="per point")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    body = multipart(clip_file("WAV"))
    points: dict[str, list[loads.Load]] = {v.name: [] for v in args.variants}
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServedService] = {}
        for v in args.variants:
            root = stack.enter_context(checkout(v.rev))
            server = ServedService(args.model, grpc_port="0", env=v.env, source_root=root)
            server.start()
            stack.callback(server.stop)
            settle(server.process.pid)
            servers[v.name] = server
        for r, name in in_turn({name: s.process.pid for name, s in servers.items()}, args.rounds, shuffle=True):
            run = partial(loads.http_load, f"{servers[name].base_url}/classify", *body)
            load = loads.measure_point(run, args.clients, args.seconds, 1.0, server_pid=servers[name].process.pid)
            points[name].append(load)
            print(f"round {r + 1} {name}: {load.rps:.1f} req/s, p50 {load.latency_ms['p50']:.2f} ms", file=sys.stderr)

    first = args.variants[0].name
    for name, loads_ in points.items():
        p50 = [x.latency_ms["p50"] for x in loads_]
        print(f"{name:14s} p50 {statistics.median(p50):6.2f} ms  p99 {statistics.median(x.latency_ms['p99'] for x in loads_):6.1f} ms"
              f"  max {max(x.latency_ms['max'] for x in loads_):6.1f} ms  {statistics.median(x.rps for x in loads_):6.1f} req/s"
              f"  (server CPU {statistics.median(1000 * x.server_cpu_s / max(x.requests, 1) for x in loads_):.1f} ms/request)")
        if name != first:
            diffs = [b.latency_ms["p50"] - a.latency_ms["p50"] for a, b in zip(points[first], loads_, strict=True)]
            print(f"{'':14s} p50 - {first}: median {statistics.median(diffs):+.2f} ms, lower in {sum(d < 0 for d in diffs)}"
                  f" of {len(diffs)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
