"""The benchmark's own logic: who is paused while what is measured, which worker answered, what the
hostile burst expects, and how the report turns measurements into figures and ratios. (The
measurements themselves run in `make bench`, not here.)"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from bench import hostile, raw
from bench.common import clip_file, cores, in_turn, libtorch_maps
from bench.report import (
    figures,
    interleaved_figures,
    lean_figures,
    listen_figures,
    markdown,
    summarize_interleaved,
)
from bench.startup import answering_pid, every_worker_answered
from soundclassifier.audio import decode
from soundclassifier.config import Settings
from soundclassifier.errors import AudioError


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


# --- interleaved ratios --------------------------------------------------------------------------


def _round(service: float, bf16: float, eager: float, engine: float, p50: float, eager_p50: float) -> dict:
    return {"service": {"rps": service, "p50_ms": 200.0}, "service-bf16": {"rps": bf16, "p50_ms": 300.0},
            "litserve-eager": {"rps": eager, "p50_ms": 900.0}, "litserve-engine": {"rps": engine, "p50_ms": 300.0},
            "service, 1 client": {"rps": 50.0, "p50_ms": p50},
            "litserve-eager, 1 client": {"rps": 20.0, "p50_ms": eager_p50}}  # fmt: skip


SERVERS = {"service": {"engine": "openvino/int8"}, "service-bf16": {"engine": "openvino/bf16"},
           "litserve-eager": {"env": {"SOUND_ENGINE": "torch"}, "engine": "torch/fp32"},
           "litserve-engine": {"engine": "openvino/int8"}}
EAGER = ("served throughput / LitServe as users deploy it, on eager PyTorch fp32",
         "p50 at 1 client / LitServe eager's p50 at 1 client")


def _rows(rounds: list[dict], servers: dict = SERVERS) -> dict[str, dict]:
    both = {"servers": servers, "rounds": rounds, **summarize_interleaved(rounds)}
    return {row["figure"].split(" (HTTP")[0]: row for row in interleaved_figures(both)}


def test_ratios_are_the_median_of_each_rounds_own_ratio_not_a_ratio_of_medians():
    # The machine slows down in round 2: each round's ratio is 1.5, the medians' ratio is not.
    rounds = [_round(300, 200, 80, 250, 10, 20), _round(150, 100, 40, 120, 20, 40), _round(240, 160, 64, 200, 12, 24)]
    summary = summarize_interleaved(rounds)
    assert summary["ratios"]["service / service-bf16"]["per_round"] == pytest.approx([1.5, 1.5, 1.5])
    assert summary["ratios"]["service / service-bf16"]["median"] == pytest.approx(1.5)
    assert summary["median_rps"]["service"] == 240 and summary["median_rps"]["service-bf16"] == 160
    assert summary["ratios"]["service, 1 client / litserve-eager, 1 client"]["median"] == pytest.approx(0.5)
    ratios = [_round(300, 200, 80, 250, 10, 20), _round(300, 100, 80, 250, 10, 20), _round(300, 250, 80, 250, 10, 20)]
    assert summarize_interleaved(ratios)["ratios"]["service / service-bf16"]["median"] == pytest.approx(1.5)


def test_each_ratio_is_reported_with_the_rounds_and_the_engines_beside_it():
    rows = _rows([_round(140, 100, 40, 100, 10, 20), _round(150, 100, 50, 100, 12, 20),
                  _round(130, 100, 40, 130, 9, 20)])
    bf16 = rows["served throughput / the same service forced to bf16"]
    assert bf16["ratio"] == pytest.approx(1.4)
    assert "openvino/int8" in bf16["measured"] and "openvino/bf16" in bf16["measured"]
    assert "per round 1.40, 1.50, 1.30" in bf16["measured"]
    assert rows["served throughput / LitServe as users deploy it, on eager PyTorch fp32"]["ratio"] == pytest.approx(3.25)
    assert rows["served throughput / LitServe on the service's own engine"]["ratio"] == pytest.approx(1.4)
    p50 = rows["p50 at 1 client / LitServe eager's p50 at 1 client"]
    assert p50["ratio"] == pytest.approx(0.5) and "ms p50" in p50["measured"]


def test_a_service_that_served_bf16_itself_is_called_out_and_a_missing_peer_says_why():
    servers = {**SERVERS, "service": {"engine": "openvino/bf16"},
               "litserve-eager": {"skipped": "litserve not installed"}}
    rounds = [{k: v for k, v in _round(100, 100, 10, 10, 10, 20).items() if not k.startswith("litserve-eager")}]
    rows = _rows(rounds, servers)
    assert "no accepted INT8 graph" in rows["served throughput / the same service forced to bf16"]["measured"]
    eager = rows["p50 at 1 client / LitServe eager's p50 at 1 client"]
    assert eager["ratio"] is None and "litserve not installed" in eager["measured"]


def test_a_peer_that_asked_for_pytorch_and_served_another_engine_is_not_reported_as_pytorch():
    # Skipped before it started (the model has no PyTorch weights), or up on the engine the service
    # fell back to (its log: openvino/int8): either way no figure is labelled eager PyTorch.
    no_weights = raw.no_pytorch(SimpleNamespace(path=Path("/nonexistent-model")))
    asked, fallback = {"SOUND_ENGINE": "torch"}, "asked for SOUND_ENGINE=torch, served openvino/int8"
    skipped = {**SERVERS, "litserve-eager": {"env": asked, "skipped": no_weights}}
    fell_back = {**SERVERS, "litserve-eager": {"env": asked, "engine": "openvino/int8"}}
    without_eager = [{k: v for k, v in _round(100, 80, 40, 90, 10, 20).items() if not k.startswith("litserve-eager")}]
    for rows, why in ((_rows(without_eager, skipped), no_weights), (_rows([_round(100, 80, 90, 90, 10, 11)], fell_back),
                                                                   fallback)):
        for title in EAGER:
            assert rows[title]["ratio"] is None and rows[title]["measured"] == f"not measured: litserve-eager: {why}"
        assert rows["served throughput / LitServe on the service's own engine"]["ratio"] == pytest.approx(100 / 90)
    # The sequential torch stage likewise.
    batching = {"http": [{"clients": 32, "rps": 100.0}]}
    for torch, why in (({"env": asked, "skipped": no_weights}, no_weights),
                       ({"env": asked, "engine": "openvino/int8", "http": [{"clients": 32, "rps": 90.0}]}, fallback)):
        rows = {r["figure"]: r for r in figures({"served": {"batching": batching, "torch": torch}})}
        row = rows["served throughput / the same service on PyTorch at 32 clients (HTTP, sequential stages)"]
        assert row["ratio"] is None and row["measured"] == f"not measured: {why}"


def test_a_model_without_pytorch_weights_is_found_before_any_server_starts(tmp_path):
    from soundclassifier.store import WEIGHTS_FILE

    model = SimpleNamespace(path=tmp_path, int8_path=None, engine_report=None)
    why = raw.no_pytorch(model)
    assert "no PyTorch weights" in why and "make bench MODEL=" in why
    assert raw.engines(model)["torch/fp32"] == f"skipped: {why}"  # the raw table says so too
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    assert raw.no_pytorch(model) is None  # (PyTorch is installed in this venv)


def test_the_report_states_figures_and_judges_none():
    """Acceptance targets live in the issues and the README: a row is a figure, what was measured
    and a ratio, with no goal, verdict or issue number; a stage that did not run says why."""
    rows = figures({})
    assert rows and all(set(row) == {"figure", "measured", "ratio"} for row in rows)
    assert all(row["measured"].startswith("not measured: ") and row["ratio"] is None for row in rows)
    assert not any(re.search(r"\(\d+\)|>=|<=", row["figure"]) for row in rows)
    meta = {"model": "m", "quick": True, "started": "now", "commit": "abc", "cpu": "cpu", "cores": 2, "bf16": True,
            "loadavg_start": 0.1, "http_client": "wrk", "clip": "clip", "command": "make bench"}
    text = markdown({"meta": meta, "figures": rows})
    assert "## Figures" in text and rows[0]["figure"] in text and "met" not in text.split("## Figures")[1]


def test_every_stage_that_ran_has_its_section():
    rounds = [_round(140, 100, 40, 100, 10, 20), _round(150, 100, 50, 100, 12, 20)]
    lean = _lean()
    lean["hostile"] |= {"statuses": {"413": 100, "200": 20}, "per_case": {"bomb": 100}, "failures": []}
    soak = {"clients": 64, "seconds": 60.0, "requests": 900, "errors": 0, "good_ok": 700, "good_failed": 0,
            "bad_refused_correctly": 200, "bad_wrong": 0, "transport_errors": 0, "readyz_after": 200,
            "good_latency_ms": {"p50": 80.0, "p99": 300.0}, "failures": []}
    results = {
        "meta": {"model": "m", "quick": False, "started": "now", "commit": "abc", "cpu": "cpu", "cores": 2,
                 "bf16": True, "loadavg_start": 0.1, "http_client": "wrk", "clip": "clip", "command": "make bench"},
        "interleaved": {"clients": 32, "seconds": 15.0, "servers": SERVERS, "rounds": rounds,
                        **summarize_interleaved(rounds)},
        "lean": {**lean, "engine": "openvino/int8"},
        "spark": {"master": "local[2]", "files": 400, "seconds": 20.0, "files_per_s": 20.0},
        "soak": soak, "listen": _listen(),
    }  # fmt: skip
    results["figures"] = figures(results)
    text = markdown(results)
    for heading in ("## Figures", "## Interleaved at 32 clients", "## Start-up and memory (openvino/int8",
                    "## Batch on Spark", "## Soak"):
        assert heading in text
    assert "| median | 145.0 | 100.0 | 45.0 | 100.0 | 11.0 | 20.0 |" in text
    assert "| 64 live streams: RSS after / before, streams dropped, other routes answered | 800 MiB -> 800 MiB" in text


def _cpu_rounds() -> list[dict]:
    """Two rounds with CPU per request, the HTTP floor and the in-process pipeline (whose req/s is
    cores x 1000 / CPU ms: 2 cores, 8 ms -> 250)."""
    rounds = [_round(140, 100, 40, 100, 10, 20), _round(150, 100, 50, 100, 12, 20)]
    for row, (service, floor, in_process) in zip(rounds, [(9.0, 3.0, 8.0), (11.0, 3.4, 12.5)], strict=True):
        for name, ms in (("service", service), ("litserve-eager", 40.0), ("litserve-engine", 12.0)):
            row[name]["cpu_ms"] = ms
        row["http-floor"] = {"rps": 400.0, "p50_ms": 70.0, "cpu_ms": floor}
        row["in-process"] = {"rps": 2000 / in_process, "cpu_ms": in_process, "batch": 16}
    return rounds


def test_cpu_per_request_is_reported_beside_the_peers_with_the_served_to_in_process_ratio():
    rounds = _cpu_rounds()
    servers = {**SERVERS, "http-floor": {"engine": "none (bench/floor_service.py)"},
               "in-process": {"engine": "openvino/int8", "batch": 16}}
    summary = summarize_interleaved(rounds)
    assert summary["median_cpu_ms"] == pytest.approx({"service": 10.0, "litserve-eager": 40.0, "litserve-engine": 12.0,
                                                      "http-floor": 3.2, "in-process": 10.25})
    assert "in-process" not in summary["median_p50_ms"] and "service-bf16" not in summary["median_cpu_ms"]
    # service 140 req/s against 2000 / 8 = 250, then 150 against 160: the median of 0.56 and 0.9375
    served = summary["ratios"]["service / in-process"]
    assert served["per_round"] == pytest.approx([0.56, 0.9375]) and served["median"] == pytest.approx(0.74875)
    meta = {"model": "m", "quick": True, "started": "now", "commit": "abc", "cpu": "cpu", "cores": 2, "bf16": True,
            "loadavg_start": 0.1, "http_client": "wrk", "clip": "clip", "command": "make bench"}
    results = {"meta": meta, "interleaved": {"clients": 32, "seconds": 2.0, "servers": servers, "rounds": rounds,
                                             **summary}}
    results["figures"] = figures(results)
    text = markdown(results)
    table = text.split("### CPU per request (32 clients)")[1]
    for row in ("| service | openvino/int8 | 10.00 | 145.0 |", "| http-floor | none (bench/floor_service.py) | 3.20 | 400.0 |",
                "| litserve-eager | torch/fp32 | 40.00 | 45.0 |", "| litserve-engine | openvino/int8 | 12.00 | 100.0 |",
                "| in-process | openvino/int8 | 10.25 | 205.0 |", "batches of 16", "served / in-process throughput: 0.75"):
        assert row in table
    assert "1 client |" not in table and "service-bf16" not in table  # no CPU measured for it here
    row = next(r for r in results["figures"] if r["figure"].startswith("served throughput / the in-process pipeline"))
    assert row["ratio"] == pytest.approx(0.74875) and "in-process 205.0 req/s on openvino/int8" in row["measured"]


class _Core:
    """What pipeline_cpu calls of a Classifier, counting the clips it was given."""

    def __init__(self):
        self.prepared = self.answered = 0

    def classify_options(self):
        return None

    def prepare(self, data):
        self.prepared += 1
        return "audio", np.sort(np.frombuffer(data, np.int16)).astype(np.float32)[None]

    def forward(self, batch):
        return batch.mean(axis=(1, 2))[:, None]

    def classification(self, audio, probs, opts):
        self.answered += 1


def test_the_in_process_pipeline_counts_every_clip_it_answered_and_its_cpu_per_clip():
    core = _Core()
    point = raw.pipeline_cpu(core, clip_file(seconds=0.5), seconds=0.0, batch=4)
    assert point["clips"] == 4 and core.prepared == core.answered == 8  # a warm-up batch, then one measured
    assert point["cpu_ms"] > 0 and point["rps"] == pytest.approx(cores() * 1000 / point["cpu_ms"])


# --- memory, start-up -----------------------------------------------------------------------------


def _memory(rss: float) -> dict:
    return {"rss_mb": rss, "pss_mb": rss * 0.8, "processes": [{"pid": 1, "rss_mb": rss, "command": "bentoml serve"}]}


def _lean(warm=700.0, loaded=800.0, after=900.0, peak=1200.0, every=10.0, mapped=()) -> dict:
    return {
        "start": {"readyz_s": 8.0, "workers": 2, "every_worker_s": every, "first_answer_s": 10.5,
                  "worker_first_answer_s": {"11": 8.0, "12": every} if every else {"11": 8.0},
                  "speed_cache": "reused", "startup_rss": {"peak_mb": peak, "peak_at_s": 5.0, "samples": 200,
                                                            "interval_s": 0.05}},
        "memory_warm": _memory(warm), "load": {"seconds": 15.0, "clients": 32}, "memory_after_load": _memory(loaded),
        "hostile": {"seconds": 30.0, "clients": 8, "requests": 120, "wrong": 0, "readyz_after": 200},
        "hostile_load": {"clients": 32, "requests": 900, "ok": 899}, "hostile_peak_mb": 1000.0,
        "memory_after_hostile": _memory(after), "libtorch": {"processes": 3, "mapped": list(mapped)},
    }  # fmt: skip


def test_memory_and_start_up_figures():
    rss, growth, peak, cold, torch = lean_figures(_lean(warm=700.0, loaded=800.0, after=900.0, peak=1200.0))
    assert "warm 700 MiB" in rss["measured"] and "32 clients 800 MiB" in rss["measured"]
    assert growth["ratio"] == pytest.approx(900 / 700) and "900 MiB vs 700 MiB warm, peak 1000 MiB" in growth["measured"]
    assert "beside 32 clients (899 of 900 answered 200)" in growth["measured"]
    assert peak["measured"].startswith("1200 MiB at 5.0 s")
    assert cold["measured"].startswith("10.0 s for 2 workers")
    assert torch["measured"] == "0 of 3 processes"
    assert lean_figures(_lean(every=None))[3]["measured"] == "only 1 of 2 workers answered"
    assert lean_figures(_lean(mapped=[12]))[4]["measured"] == "1 of 3 processes: [12]"


def test_a_skipped_lean_stage_measures_nothing():
    assert all(row["measured"] == "not measured: lean stage skipped" for row in lean_figures(None))


def test_the_cold_start_ends_when_the_last_distinct_worker_answers():
    answers = [(8.0, 11), (8.1, 11), (8.2, 11), (9.7, 12), (9.8, 11)]
    assert every_worker_answered(answers, 2) == 9.7
    assert every_worker_answered(answers, 1) == 8.0
    assert every_worker_answered(answers, 3) is None


WORKER = textwrap.dedent("""
    import http.server, socket, sys
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=int(sys.argv[1]))
    server.serve_forever()
""")


def test_the_worker_that_answered_is_found_from_the_connection(tmp_path):
    """Two processes accept on one inherited listening socket, as BentoML's workers do: probing
    with new connections finds both, by pid, and no other."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(listener.fileno())], pass_fds=[listener.fileno()])
               for _ in range(2)]
    try:
        tree = [psutil.Process(os.getpid()), *(psutil.Process(w.pid) for w in workers)]
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            pid = answering_pid(port, tree)
            assert pid is None or pid in {w.pid for w in workers}
            if pid is not None:
                seen.add(pid)
            else:
                time.sleep(0.02)
        assert seen == {w.pid for w in workers}
    finally:
        for w in workers:
            w.kill()
            w.wait()
        listener.close()


def test_libtorch_is_found_in_a_process_that_loaded_it_and_not_in_one_that_did_not(sleepers):
    assert libtorch_maps(sleepers[0])["mapped"] == []
    torch_user = subprocess.Popen([sys.executable, "-c", "import torch, sys; print(1, flush=True); sys.stdin.read()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert torch_user.stdout.readline().strip() == b"1"
        assert libtorch_maps(torch_user.pid) == {"processes": 1, "mapped": [torch_user.pid]}
    finally:
        torch_user.kill()
        torch_user.wait()


# --- the hostile burst -----------------------------------------------------------------------------


def test_the_hostile_cases_sit_on_the_right_side_of_the_limits_they_test():
    """Sizes come from the settings: under small limits, the decoder itself refuses the bomb and
    accepts the large clip, and the other cases cross the limit they are named after."""
    settings = Settings(max_samples=2**18, max_clip_seconds=8.0, max_upload_mb=1.0, max_timeline_windows=40)
    cases = {c.name.split(" (")[0]: c for c in hostile.cases(settings)}
    bomb = cases["bomb"].files[0][1][1]
    assert len(bomb) < 50_000
    with pytest.raises(AudioError) as e:
        decode(bomb, settings.clip_limits)
    assert e.value.kind.value == cases["bomb"].error == "too_large"
    large = next(c for name, c in cases.items() if name.endswith("s clip"))
    data = large.files[0][1][1]
    assert len(data) <= settings.max_upload_mb * 2**20
    assert decode(data, settings.clip_limits).duration <= settings.max_clip_seconds
    windows = cases["timeline over its window budget"]
    info = sf.info(io.BytesIO(windows.files[0][1][1]))
    assert info.duration / float(windows.data["hop_s"]) > settings.max_timeline_windows
    oversize = next(c for name, c in cases.items() if name.startswith("upload over"))
    assert len(oversize.files[0][1][1]) > settings.max_upload_mb * 2**20 and oversize.closed_early_ok


def test_a_hostile_answer_is_wrong_unless_status_and_error_kind_match():
    import httpx

    case = hostile.Case("bomb", "/classify", [], (413,), "too_large")
    assert hostile.check(case, httpx.Response(413, json={"error": "too_large", "detail": "x"})) is None
    assert "status 500" in hostile.check(case, httpx.Response(500, text="oops"))
    assert "expected 'too_large'" in hostile.check(case, httpx.Response(413, json={"error": "bad_request"}))


def _listen(p95=50.0, before=800.0, after=800.0, dropped=0, ok=10, sent=10) -> dict:
    stream = {"streams": 16, "seconds": 20, "windows": 500, "dropped": 0, "failures": []}
    return {
        "latency": {**stream, "p50_ms": 10.0, "p95_ms": p95, "max_ms": 2 * p95},
        "soak": {**stream, "streams": 64, "seconds": 60, "dropped": dropped},
        "memory_before": {"rss_mb": before}, "memory_after": {"rss_mb": after},
        "other_requests": {"sent": sent, "ok": ok},
    }  # fmt: skip


def test_live_listening_figures():
    lag, memory = listen_figures(_listen(p95=50.0, after=880.0, dropped=1, ok=9))
    assert "p95 50.0 ms" in lag["measured"] and "500 windows of 16 streams" in lag["measured"]
    assert memory["ratio"] == pytest.approx(1.1) and "800 MiB -> 880 MiB" in memory["measured"]
    assert "1 of 64 streams dropped" in memory["measured"] and "9/10 answered" in memory["measured"]
    assert all(row["measured"] == "not measured: listen stage skipped" for row in listen_figures(None))


def test_the_listen_stage_measures_real_streams(served):
    """bench.listen against the session's real server: every window of every stream arrives and
    each one's lag is measured (2 streams, 6 s at real speed)."""
    import httpx

    from bench.listen import streams

    window_s = httpx.post(f"{served.base_url}/info").json()["feature_settings"]["clip_seconds"]
    result = streams(served.base_url.replace("http://", "ws://"), 2, 6.0, window_s)
    assert result["dropped"] == 0, result["failures"]
    assert result["windows_expected_per_stream"] >= 2
    assert result["windows"] >= 2 * (result["windows_expected_per_stream"] - 1)  # full windows (the last may be short)
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["max_ms"] < 5000


def test_the_http_floor_is_wired_as_the_service_is():
    """Its configuration and middlewares are service.py's own objects, not a copy that can drift."""
    import service
    from bench import floor_service
    from serving.door import UploadDoor
    from serving.edge import CancelOnDisconnect
    from serving.http_guard import UploadGuard

    assert floor_service.HttpFloor.config == service.SoundClassifier.config
    assert floor_service.HttpFloor.middlewares == service.SoundClassifier.middlewares
    assert [m for m, _ in floor_service.HttpFloor.middlewares] == [CancelOnDisconnect, UploadGuard, UploadDoor]


@pytest.mark.slow
@pytest.mark.served  # bentoml serve bench.floor_service:HttpFloor
def test_the_http_floor_takes_the_service_s_requests_and_refuses_what_it_refuses():
    """bench/floor_service.py must cost what the service's front door costs: same route, same
    guard, same parse; only the pipeline is left out."""
    from bench.common import clip_file, http_floor, multipart
    from testkit.server import free_port

    port = free_port()
    floor = http_floor(port, env={"SOUND_WORKERS": "1", "BENTOML_DO_NOT_TRACK": "True"})
    try:
        body, content_type = multipart(clip_file())
        url = f"http://127.0.0.1:{port}/classify"
        answer = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == "http-floor"
        bad_body, bad_type = multipart(clip_file(), fields={"top_k": "0"})
        refused = httpx.post(url, content=bad_body, headers={"content-type": bad_type}, timeout=30)
        assert refused.status_code == 400 and "top_k" in refused.text
    finally:
        floor.stop()
