"""A worker killed under load, in a container (BENTOML_CONTAINERIZED=true), with serving/supervise.py.

`bentoml serve testkit.edge_service:EdgeTiny` (2 workers); 8 client threads run for the whole test
while one worker gets SIGKILL. What BentoML does alone there: nothing (no respawn, /livez answered
200 by the survivor). With WorkerCensus behind `__is_alive__`, /livez fails at once; with
respawn_in_containers() too, circus starts a replacement at its next check (<= 10 s).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from testkit.edge_probe import Background
from testkit.server import free_port


def test_the_respawn_switch_is_still_where_respawn_in_containers_expects_it():
    import bentoml.serving
    from _bentoml_impl.server import serving as new_style

    assert "respawn=not running_inside_container()" in inspect.getsource(bentoml.serving.create_watcher)
    # serve_http imports create_watcher when called, after the CLI has imported the service module.
    assert "from bentoml.serving import create_watcher" in inspect.getsource(new_style.serve_http)


class _Load:
    """8 threads posting /echo until stopped; each request's start, outcome and duration."""

    def __init__(self, port: int):
        self.port, self.results, self.stopping = port, [], threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(8)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    outcome = client.post("/echo", json={"text": "hi"}).status_code
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                self.results.append((start, outcome, time.monotonic() - start))

    def stop(self) -> list:
        self.stopping.set()
        for t in self.threads:
            t.join(15)
        return self.results


def _serve(env: dict) -> Background:
    port = free_port()
    cli = str(Path(sys.executable).with_name("bentoml"))
    return Background([cli, "serve", "testkit.edge_service:EdgeTiny", "--host", "127.0.0.1", "--port", str(port)],
                      port, ready_path="/readyz", start_timeout_s=90,
                      env={"BENTOML_CONTAINERIZED": "true", "BENTOML_DO_NOT_TRACK": "True",
                           "EDGE_CANCEL_LOG": os.devnull, **env})


def _workers(server: Background) -> list[int]:
    arbiter = psutil.Process(server.proc.pid)
    return sorted(p.pid for p in arbiter.children() if p.status() != psutil.STATUS_ZOMBIE)


def _livez(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code


def _kill_one_under_load(server: Background, until, timeout_s: float = 60.0) -> dict:
    """Load until requests flow, SIGKILL a worker, keep loading while polling /livez and the workers
    until `until(seen)` holds (or `timeout_s` passes), and a little past it."""
    deadline = time.monotonic() + 90
    while len(_workers(server)) < 2 or _livez(server.port) != 200:
        assert time.monotonic() < deadline, "the server never had two live workers"
        time.sleep(0.2)
    load = _Load(server.port)
    while sum(1 for _, outcome, _ in load.results if outcome == 200) < 50:  # both workers answering
        assert time.monotonic() < deadline, "no load got through"
        time.sleep(0.05)
    before = _workers(server)
    killed_at = time.monotonic()
    os.kill(before[0], signal.SIGKILL)
    seen = {"before": before, "livez": [], "workers": [], "killed_at": killed_at}
    done_at = None
    while done_at is None or time.monotonic() < done_at + 2:  # 2 s more: what follows the event holds
        seen["livez"].append((time.monotonic() - killed_at, _livez(server.port)))
        seen["workers"].append((time.monotonic() - killed_at, _workers(server)))
        if done_at is None and (until(seen) or time.monotonic() - killed_at > timeout_s):
            done_at = time.monotonic()
        time.sleep(0.25)
    seen["results"] = load.stop()
    return seen


def _requests_were_answered_or_failed_fast(seen: dict) -> None:
    after = [r for r in seen["results"] if r[0] > seen["killed_at"] + 0.5]
    assert len(after) > 50
    assert all(outcome == 200 for _, outcome, _ in after), {o for _, o, _ in after}
    failed = [r for r in seen["results"] if r[1] != 200]
    assert len(failed) <= 8  # only requests in flight on the killed worker: one per client thread at most
    # Reset when the worker died, never left hanging until the client's own timeout (10 s).
    assert all(took < 5.0 for _, _, took in failed), failed


def _livez_failed(seen: dict) -> bool:
    return any(code != 200 for _, code in seen["livez"])


def _replaced(seen: dict) -> bool:
    return any(len(pids) == 2 and pids != seen["before"] for _, pids in seen["workers"])


@pytest.mark.slow
@pytest.mark.served  # _serve: bentoml serve testkit.edge_service:EdgeTiny
def test_a_killed_worker_makes_livez_fail_in_a_container():
    server = _serve({})
    try:
        # Past circus's next check (10 s): a replacement would have come by then.
        seen = _kill_one_under_load(server, until=lambda seen: _livez_failed(seen) and seen["livez"][-1][0] > 12)
    finally:
        server.stop()
    _requests_were_answered_or_failed_fast(seen)
    first_failure = next(t for t, code in seen["livez"] if code != 200)
    assert first_failure < 10.0  # at the first probe after the kill, with room for a loaded machine
    assert all(code == 503 for t, code in seen["livez"] if t >= first_failure)
    assert seen["workers"][-1][1] == seen["before"][1:]  # BentoML in a container: never replaced


@pytest.mark.slow
@pytest.mark.served  # _serve: bentoml serve testkit.edge_service:EdgeTiny
def test_a_killed_worker_is_replaced_in_a_container_with_respawn_in_containers():
    server = _serve({"EDGE_RESPAWN": "1"})
    try:
        seen = _kill_one_under_load(server, until=lambda seen: _replaced(seen) and seen["livez"][-1][1] == 200)
    finally:
        server.stop()
    _requests_were_answered_or_failed_fast(seen)
    replaced = next(t for t, pids in seen["workers"] if len(pids) == 2 and pids != seen["before"])
    assert replaced <= 30.0  # circus's next check (BentoML sets check_delay = 10 s), on a loaded machine
    assert seen["livez"][-1][1] == 200


def _livez_or_timeout(port: int) -> int | str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code
    except httpx.TimeoutException:  # the probe reached the stuck worker itself
        return "timeout"


@pytest.mark.slow
@pytest.mark.served  # _serve: bentoml serve testkit.edge_service:EdgeTiny
def test_a_worker_whose_event_loop_is_blocked_makes_livez_fail():
    """A stuck worker answers nothing and the kernel gives the probe to a sibling, which used to
    answer 200. With heartbeats, the sibling answers 503 within SOUND_WORKER_STALL_S (5 s here):
    /livez fails within 30 s, whichever worker it reaches."""
    server = _serve({"EDGE_STALL_S": "5"})
    try:
        deadline = time.monotonic() + 90
        while len(_workers(server)) < 2 or _livez(server.port) != 200:
            assert time.monotonic() < deadline, "the server never had two live workers"
            time.sleep(0.2)
        time.sleep(2)  # both workers have beaten at least once

        wedged = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{server.port}/wedge",
                                                            json={"seconds": 60}, timeout=90), daemon=True)
        wedged.start()
        start = time.monotonic()
        probes: list[tuple[float, int | str]] = []
        while time.monotonic() - start < 30 and (not probes or probes[-1][1] != 503):
            probes.append((time.monotonic() - start, _livez_or_timeout(server.port)))
            time.sleep(0.25)
        failed_at = next((t for t, outcome in probes if outcome == 503), None)
        assert failed_at is not None, probes  # a sibling reports it: not only the stuck one's silence
        then = [_livez_or_timeout(server.port) for _ in range(8)]
        assert 200 not in then, then
        assert "stalled" in server.output(), server.output()
    finally:
        server.stop()


def test_outside_a_bentoml_worker_the_census_is_always_healthy():
    from serving.supervise import WorkerCensus

    census = WorkerCensus(expected=4)  # pytest is no BentoML worker: no siblings to count
    assert not census.in_worker and census.healthy()
