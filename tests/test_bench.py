"""The benchmark's own logic that decides verdicts: who is paused while what is measured, and how the
paired latency target is judged. (The measurements themselves run in `make bench`, not here.)"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench.common import in_turn
from bench.report import ENGINE_LATENCY_ALLOWANCE_MS, paired_latency, targets


@pytest.fixture
def sleepers():
    """Two idle processes, each the leader of its own process group (as the served servers are)."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
             for _ in range(2)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def _becomes(pid: int, stopped: bool) -> bool:
    """Whether the process is (or within 2 s becomes) stopped, or running: SIGSTOP and SIGCONT are
    delivered asynchronously."""
    deadline = time.monotonic() + 2
    while (psutil.Process(pid).status() == psutil.STATUS_STOPPED) != stopped:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_in_turn_pauses_every_other_server_and_all_of_them_for_an_in_process_measurement(sleepers):
    a, b = sleepers
    running = {"a": {a}, "b": {b}, "a at one client": {a}, "in process": set()}
    turns = list(in_turn({"a": a, "b": b, "a at one client": a, "in process": None}, rounds=2))
    assert [name for _, name in turns] == list(running) * 2
    for r, name in in_turn({"a": a, "b": b, "a at one client": a, "in process": None}, rounds=2):
        for pid in (a, b):
            assert _becomes(pid, stopped=pid not in running[name]), f"round {r}, {name}: process {pid}"
    assert _becomes(a, stopped=False) and _becomes(b, stopped=False), "every server runs again after the last turn"


def _verdict(pairs: list[tuple[float, float]]) -> dict:
    paired = paired_latency("openvino/bf16", [{"p50_ms": p50, "raw_ms": raw} for p50, raw in pairs])
    return next(t for t in targets({"interleaved": {"latency": paired}}, soak_seconds=60)
                if t["target"].startswith("(9) HTTP p50") and t["target"].endswith("(interleaved)"))


@pytest.mark.parametrize(("pairs", "gap", "met"), [
    # each round: (served p50 at one client, the engine's one-clip call right after), in ms
    ([(9.0, 5.0), (12.0, 6.0), (9.5, 5.0), (11.5, 5.5)], 5.25, False),  # differences 4, 6, 4.5, 6
    ([(9.0, 5.0), (12.0, 6.0), (9.5, 5.0), (10.5, 5.5)], 4.75, True),   # differences 4, 6, 4.5, 5
])  # fmt: skip
def test_the_paired_latency_target_is_judged_on_the_median_of_the_rounds_differences(pairs, gap, met):
    row = _verdict(pairs)
    assert row["met"] is met
    assert row["ratio"] == pytest.approx(gap / ENGINE_LATENCY_ALLOWANCE_MS)
    assert f"p50 - raw = {gap:.1f} ms" in row["measured"]
