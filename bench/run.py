"""One benchmark run: the raw model, the features, and the real server over HTTP and gRPC.

    make bench                                             # the full run (~25 min here), on a quiet machine
    python -m bench.run --quick                            # the same stages, short (a few minutes)
    python -m bench.run --model sound-resnet:abc123 --out bench/results
    python -m bench.run --quick --skip bento,litserve,torch      # leave stages out

Stages, in order, each measured in this one run so ratios compare like with like:
    raw       clips/s and latency per batch size (1..32) for every engine the model can run on (INT8
              from the graph stored with it), in process, through soundclassifier.store.load_model and
              soundclassifier.engine (the ceiling), with the stored engine report's verdict
    features  decode + resample + log-mel per 5-second clip, per format (Classifier.prepare), and
              the served engine wide or as streams, alone and beside a busy feature thread
    lean      memory and start-up of one `bentoml serve` with the defaults, before anything else of the
              run is up: launch to every worker answering (bench/startup.py) with the tree's RSS sampled every
              50 ms (the start-up peak); RSS after warm-up, after a 32-client load, and around a hostile
              burst (bench/hostile.py) mixed into a 32-client load: its peak, and 30 s after the last
              request (the served tree must give back what they took); whether a served process maps libtorch
    bento     `bentoml build` + `export`, then `import` into an empty BentoML home and `bentoml serve`
              of the Bento to its first answer
    image     the image `make image` built last (skipped when there is none): 5 cold starts, container
              start to the first /classify answer, and one container at 1/8/32 clients (bench/container.py)
    http      a real `bentoml serve` with adaptive batching (the default), at 1/8/32/64 clients (wrk)
    grpc      the same server over gRPC (grpc.aio clients, Classify)
    soak      64 clients mixing good and bad files on that server (bench/soak.py), every answer checked
    nobatch   a second server with SOUND_MAX_BATCH_SIZE=1: the naive baseline
    torch     a third server with SOUND_ENGINE=torch: the PyTorch eager peer (skipped, as LitServe-eager is,
              when the model has no PyTorch weights: the shipped model has graphs only)
    litserve  the same model and features under LitServe's batching (only if litserve is installed)
    interleaved  the peer ratios at 32 clients: the service (its automatic engine: INT8 where the
              model's report accepts it), the same service forced to bf16 (SOUND_PRECISION=bf16),
              LitServe as users deploy it (eager PyTorch fp32, SOUND_ENGINE=torch), LitServe on the
              service's own engine and the HTTP floor (bench/floor_service.py), all up together and
              loaded in turn (the others paused) for several rounds, plus the service and LitServe-eager
              at one client and the request path in process (every server paused), with CPU per request;
              ratios are the medians of the rounds' own ratios, so the machine's drift cannot bias them
Mean batch sizes come from the server's /metrics around each measured window. Results go to
OUT/bench-<time>.{json,md,png} and OUT/latest.{json,md,png}; the Markdown is also printed.
The report's headline figures and ratios come first (bench/report.py); what they should reach is
for the issues and the README to say. Exit status 1 if a stage failed or the soak saw an error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx

from bench import hostile, raw, report, startup
from bench import load as loads
from bench.common import (
    CLIP_RATE,
    CLIP_SECONDS,
    RssSampler,
    clip_file,
    cores,
    http_floor,
    in_turn,
    libtorch_maps,
    multipart,
    settle,
    tree_memory,
    tree_rss_mb,
)
from bench.soak import run_soak
from soundclassifier.config import Settings
from soundclassifier.hardware import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("raw", "features", "lean", "bento", "image", "http", "grpc", "soak", "nobatch", "torch", "litserve", "interleaved",
          "listen", "spark")
SERVER_START_TIMEOUT_S = 300.0

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Plan:
    """How long each stage measures. Full: `make bench`; quick: the same stages, short."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    raw_seconds: float = 2.0  # per engine and batch size
    feature_repeats: int = 30  # per format
    clients: tuple[int, ...] = (1, 8, 32, 64)
    peer_clients: tuple[int, ...] = (1, 8, 32, 64)  # for the no-batching, torch and LitServe servers
    point_seconds: float = 15.0  # per measured load point
    warmup_seconds: float = 3.0  # before each point, same concurrency, not measured
    soak_seconds: float = 60.0
    soak_clients: int = 64
    litserve: bool = True  # the LitServe peer (its start-up alone takes ~20 s)
    rounds: int = 4  # of the interleaved comparison
    spark_files: int = 400  # clips classified by the Spark job on local[2]
    hostile_seconds: float = 30.0  # the hostile burst of the lean stage
    hostile_clients: int = 8
    listen_seconds: float = 20.0  # the live-stream latency run (16 streams)
    listen_soak_seconds: float = 60.0  # the live-stream memory run (64 streams)
    listen_warmup_seconds: float = 60.0  # the 64 streams' warm-up before their memory is measured


FULL = Plan()
QUICK = Plan(raw_seconds=0.2, feature_repeats=5, peer_clients=(1, 32), point_seconds=2.0, warmup_seconds=0.5,
             soak_seconds=5.0, litserve=False, spark_files=48, rounds=1, hostile_seconds=5.0, listen_seconds=6.0,
             listen_soak_seconds=8.0, listen_warmup_seconds=4.0)
LISTEN_STREAMS = (16, 64)  # latency at 16 real-speed streams; memory and drops at 64
PEER_CLIENTS = 32  # where the peer ratios are taken

# The interleaved stage's servers: name -> (kind, environment). The names are those of report.RATIOS.
INTERLEAVED = {
    "service": ("service", {}),
    "service-bf16": ("service", {"SOUND_PRECISION": "bf16"}),
    "litserve-eager": ("litserve", {"SOUND_ENGINE": "torch"}),
    "litserve-engine": ("litserve", {}),
    "http-floor": ("floor", {}),  # the service's front door, guard and upload parse, no pipeline
}
IN_PROCESS = "in-process"  # measured in this process with every server paused (raw.pipeline_cpu)
ONE_CLIENT = ("service", "litserve-eager")  # also measured at one client, as "<name>, 1 client"


def resolve_tag(tag: str) -> str:
    import bentoml

    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        sys.exit(f"model {tag} is not in the store ({os.environ.get('BENTOML_HOME', '~/bentoml')}): run `make train`")


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": cores(), "bf16": cpu_has_bf16(), "commit": commit + ("+dirty" if dirty else ""),
            "loadavg_start": os.getloadavg()[0]}


# --- served stages -------------------------------------------------------------------------------


def served_sweep(tag: str, name: str, env: dict[str, str], plan: Plan, body: tuple[bytes, str], audio: bytes,
                 clients: tuple[int, ...], *, with_http: bool = True, with_grpc: bool = False, with_soak: bool = False,
                 out: Path, results: dict) -> None:
    """Start one server, sweep it over HTTP (and gRPC), soak it if asked, stop it; results in place."""
    from testkit.server import free_port

    log.info("served: %s %s", name, env or "(defaults)")
    entry: dict = {"env": env}
    results["served"][name] = entry
    with stage_server(tag, name, entry, out, env=env, grpc_port=free_port() if with_grpc else "0") as server:
        started = time.perf_counter()
        server.start()
        entry["start_s"] = time.perf_counter() - started
        entry["settle_s"] = settle(server.process.pid)
        info = httpx.post(f"{server.base_url}/info", timeout=30).json()
        entry.update(engine=f"{info['engine']}/{info['precision']}", max_batch_size=info["max_batch_size"],
                     max_latency_ms=info["max_latency_ms"], engines_tried=info["engines_tried"])
        wanted = int(env.get("SOUND_MAX_BATCH_SIZE", info["max_batch_size"]))
        if info["max_batch_size"] != wanted:
            entry["warning"] = f"asked for SOUND_MAX_BATCH_SIZE={wanted}, the server reports {info['max_batch_size']}"
            log.warning("  %s", entry["warning"])
        log.info("  up in %.0f s on %s, max batch %d", entry["start_s"], entry["engine"], info["max_batch_size"])
        pid, url = server.process.pid, server.base_url
        entry["rss_mb_start"] = tree_rss_mb(pid)
        if with_http:
            http = partial(loads.http_load, f"{url}/classify", *body)
            entry["http"] = [loads.measure_point(http, c, plan.point_seconds, plan.warmup_seconds, base_url=url,
                                                 server_pid=pid).as_dict() for c in clients]
        if with_grpc:
            rpc = partial(loads.grpc_load, f"127.0.0.1:{server.grpc_port}", audio)
            entry["grpc"] = [loads.measure_point(rpc, c, plan.point_seconds, plan.warmup_seconds, base_url=url,
                                                 server_pid=pid).as_dict() for c in clients]
        if with_soak:
            results["soak"] = run_soak(url, plan.soak_clients, plan.soak_seconds, server_pid=pid)
        entry["rss_mb_end"] = tree_rss_mb(pid)


NO_LITSERVE = "litserve not installed (pip install litserve==0.2.19 python-multipart)"


def have_litserve() -> bool:
    return importlib.util.find_spec("litserve") is not None and importlib.util.find_spec("multipart") is not None


@contextlib.contextmanager
def litserve_peer(tag: str, out: Path, name: str = "litserve", env: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, int, str]]:
    """The LitServe peer up on a free port with `env` added: (predict URL, pid, engine), stopped on exit."""
    from testkit.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "bench.litserve_peer", "--model", tag, "--port", str(port), "--max-batch-size", "32"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **(env or {})}
    log_path = out / f"server-{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the LitServe peer did not come up (exit {proc.poll()}); see {log_path.name}")
        # An idle LitServe still polls its queues (0.18 of a core here): settled is below 0.3.
        log.info("  %s up on :%d (settled in %.0f s)", name, port, settle(proc.pid, busy_cores=0.3))
        found = re.search(r"litserve peer serving \S+ on (\S+)", log_path.read_text(errors="replace"))
        yield f"http://127.0.0.1:{port}/predict", proc.pid, found.group(1) if found else "?"
    finally:
        os.killpg(proc.pid, 2)  # its own process group (start_new_session): the server and its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def litserve_sweep(tag: str, plan: Plan, body: tuple[bytes, str], results: dict) -> None:
    if not have_litserve():
        results["served"]["litserve"] = {"skipped": NO_LITSERVE}
        log.info("litserve: not installed, skipped")
        return
    log.info("served: litserve peer")
    entry: dict = {"max_batch_size": 32}
    results["served"]["litserve"] = entry
    try:
        with litserve_peer(tag, Path(results["meta"]["out"])) as (url, pid, engine):
            entry["engine"] = engine
            http = partial(loads.http_load, url, *body)
            entry["http"] = [loads.measure_point(http, c, plan.point_seconds, plan.warmup_seconds, server_pid=pid).as_dict()
                             for c in plan.peer_clients]
    except Exception as e:  # noqa: BLE001
        entry["failed"] = f"{type(e).__name__}: {e}"
        log.exception("  litserve failed")


def private_home(stack: contextlib.ExitStack) -> Path:
    """A BentoML home of its own that sees the run's model store. `bentoml serve` empties
    <home>/prometheus_multiproc_dir when it starts, so a second server on the same home silently
    erases the first one's metrics (its /metrics, hence the mean batch sizes, lose its counts)."""
    import tempfile

    from bentoml._internal.configuration.containers import BentoMLContainer

    home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-home-")))
    (home / "models").symlink_to(Path(BentoMLContainer.bentoml_home.get()) / "models")
    return home


def started_service(tag: str, name: str, env: dict[str, str], out: Path, stack: contextlib.ExitStack):
    """A `bentoml serve` with `env` added, on a private home (so servers up together keep their own
    metrics), settled, stopped (and its log kept) when `stack` closes."""
    from testkit.server import ServedService

    server = ServedService(tag, grpc_port="0", env=env, start_timeout_s=SERVER_START_TIMEOUT_S,
                           bentoml_home=private_home(stack))

    def stop() -> None:
        server.stop()
        (out / f"server-{name}.log").write_text(server.log())

    stack.callback(stop)
    server.start()
    settle(server.process.pid)
    return server


def interleaved(tag: str, plan: Plan, body: tuple[bytes, str], audio: bytes, out: Path, results: dict,
                no_torch: str | None = None) -> None:
    """The peer ratios (report.RATIOS) at PEER_CLIENTS clients (and one client), with every
    INTERLEAVED server up at once and loaded in turn, round after round (those asking for PyTorch skipped
    when `no_torch` says why it cannot run). Sequential stages let the machine's drift into the ratios
    (here its speed moved by 15% within minutes); in turn, each round compares them under the same
    conditions, and the report takes the median of the rounds' own ratios. The servers not under load
    are paused (`in_turn`), so none pays for another's idle work."""
    from soundclassifier.pipeline import open_pipeline
    from testkit.server import free_port

    entry: dict = {"clients": PEER_CLIENTS, "seconds": plan.point_seconds, "servers": {},
                   "rounds": [{} for _ in range(plan.rounds)]}
    results["interleaved"] = entry
    log.info("interleaved: %s, %d rounds at %d clients (and %s at one client)", ", ".join(INTERLEAVED), plan.rounds,
             PEER_CLIENTS, ", ".join(ONE_CLIENT))
    with contextlib.ExitStack() as stack:
        targets: dict[str, tuple[str, int, str | None]] = {}  # name -> (URL, pid, base URL of a service)
        for name, (kind, env) in INTERLEAVED.items():
            if env.get("SOUND_ENGINE") == "torch" and no_torch:
                entry["servers"][name] = {"env": env, "skipped": no_torch}
                continue
            if kind == "litserve":
                if not have_litserve():
                    entry["servers"][name] = {"skipped": NO_LITSERVE}
                    continue
                url, pid, engine = stack.enter_context(litserve_peer(tag, out, f"interleaved-{name}", env))
                targets[name] = (url, pid, None)
                entry["servers"][name] = {"env": env, "engine": engine}
            elif kind == "floor":
                floor = http_floor(free_port())
                stack.callback(floor.stop)
                settle(floor.proc.pid)
                targets[name] = (f"http://127.0.0.1:{floor.port}/classify", floor.proc.pid, None)
                entry["servers"][name] = {"env": env, "engine": "none (bench/floor_service.py)"}
            else:
                server = started_service(tag, f"interleaved-{name}", env, out, stack)
                info = httpx.post(f"{server.base_url}/info", timeout=30).json()
                targets[name] = (f"{server.base_url}/classify", server.process.pid, server.base_url)
                entry["servers"][name] = {"env": env, "engine": f"{info['engine']}/{info['precision']}",
                                          "engines_tried": info["engines_tried"]}
            log.info("  %s: %s", name, entry["servers"][name]["engine"])
        core = open_pipeline(Settings(), tag).classifier  # the engine and layout a service worker gets
        entry["servers"][IN_PROCESS] = {"engine": f"{core.engine.name}/{core.engine.precision}",
                                        "batch": raw.PIPELINE_BATCH}
        points = {name: (*t, PEER_CLIENTS) for name, t in targets.items()}
        points |= {f"{name}, 1 client": (*targets[name], 1) for name in ONE_CLIENT if name in targets}
        for r, name in in_turn({name: p[1] for name, p in points.items()} | {IN_PROCESS: None}, plan.rounds):
            log.info("  round %d: %s", r + 1, name)
            if name == IN_PROCESS:
                entry["rounds"][r][name] = raw.pipeline_cpu(core, audio, plan.point_seconds)
                continue
            url, pid, base, clients = points[name]
            load = loads.measure_point(partial(loads.http_load, url, *body), clients,
                                       plan.point_seconds, plan.warmup_seconds, base_url=base, server_pid=pid)
            entry["rounds"][r][name] = {"clients": clients, "rps": load.rps, "errors": load.errors,
                                        "p50_ms": load.latency_ms["p50"], "p99_ms": load.latency_ms["p99"],
                                        "mean_batch": load.mean_batch,
                                        "cpu_ms": 1000 * load.server_cpu_s / load.ok if load.ok else None}
    entry.update(report.summarize_interleaved(entry["rounds"]))


@contextlib.contextmanager
def stage_server(tag: str, name: str, entry: dict, out: Path, env: dict[str, str] | None = None,
                 grpc_port: int | str = "0") -> Iterator:
    """A stage's own server, with `env` added to the defaults (not started: the stage starts it,
    and may time that): stopped and its log kept however the stage ends; a failure is recorded in
    `entry` (one failed stage must not lose the others)."""
    from testkit.server import ServedService

    server = ServedService(tag, grpc_port=grpc_port, env=env, start_timeout_s=SERVER_START_TIMEOUT_S)
    try:
        yield server
    except Exception as e:  # noqa: BLE001
        entry["failed"] = f"{type(e).__name__}: {e}"
        log.exception("  %s failed", name)
    finally:
        server.stop()
        (out / f"server-{name}.log").write_text(server.log())


def lean(tag: str, plan: Plan, body: tuple[bytes, str], out: Path, results: dict) -> None:
    """Memory and start-up of one server with the defaults: cold start and start-up peak (bench/startup.py),
    RSS after warm-up, after a PEER_CLIENTS load and after a hostile burst (bench/hostile.py), and
    whether a served process maps libtorch."""

    workers, _, _ = Settings().layout()  # the environment the server inherits
    entry: dict = {}
    results["lean"] = entry
    log.info("lean: cold start, memory (%d workers)", workers)
    with stage_server(tag, "lean", entry, out) as server:
        entry["start"] = startup.launch(server, workers, body)
        pid, url = server.process.pid, server.base_url
        info = httpx.post(f"{url}/info", timeout=30).json()
        entry["engine"] = f"{info['engine']}/{info['precision']}"
        http = partial(loads.http_load, f"{url}/classify", *body)
        http(PEER_CLIENTS, max(plan.warmup_seconds, 2.0))
        loads.wait_idle(url)
        entry["memory_warm"] = tree_memory(pid)
        entry["load"] = loads.measure_point(http, PEER_CLIENTS, plan.point_seconds, 0, base_url=url,
                                            server_pid=pid).as_dict()
        entry["memory_after_load"] = tree_memory(pid)
        entry["hostile"], entry["hostile_load"], entry["hostile_peak_mb"] = mixed_burst(pid, url, http, plan)
        loads.wait_idle(url)
        # What a client is promised: the tree gives back what the requests took within 30 s of the last.
        time.sleep(max(0.0, RETURN_WITHIN_S - (time.monotonic() - entry["hostile"]["ended_at"])))
        entry["memory_after_hostile"] = tree_memory(pid)
        entry["libtorch"] = libtorch_maps(pid)
        log.info("  RSS warm %.0f MiB, after load %.0f, peak of the hostile burst beside %d clients %.0f, %g s after "
                 "it %.0f; libtorch mapped by %s", entry["memory_warm"]["rss_mb"], entry["memory_after_load"]["rss_mb"],
                 PEER_CLIENTS, entry["hostile_peak_mb"], RETURN_WITHIN_S, entry["memory_after_hostile"]["rss_mb"],
                 entry["libtorch"]["mapped"] or "no process")


RETURN_WITHIN_S = 30.0


def mixed_burst(pid: int, url: str, http, plan: Plan) -> tuple[dict, dict, float]:
    """The hostile burst beside a PEER_CLIENTS load of good clips, for as long: the burst's result
    (with `ended_at`, time.monotonic() of its last answer), the load's, and the tree's peak RSS,
    sampled every 0.2 s while they ran."""
    from concurrent.futures import ThreadPoolExecutor

    before = tree_rss_mb(pid)
    sampler = RssSampler(lambda: pid, interval_s=0.2).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(http, PEER_CLIENTS, plan.hostile_seconds)
            burst = hostile.run_burst(url, plan.hostile_clients, plan.hostile_seconds)
            good = load.result().as_dict()
        burst["ended_at"] = time.monotonic()
    finally:
        sampler.stop()
    return burst, good, max([before, *(mb for _, mb in sampler.samples)])


def listen_stage(tag: str, plan: Plan, body: tuple[bytes, str], out: Path, results: dict) -> None:
    """Live listening on one server with the defaults: the lag of 16 real-speed /listen streams, then 64
    streams with a /classify every second beside them: RSS before and after, streams dropped,
    other requests answered."""
    import threading

    from bench import listen

    entry: dict = {}
    results["listen"] = entry
    log.info("listen: %d real-speed streams for %g s, then %d for %g s", LISTEN_STREAMS[0], plan.listen_seconds,
             LISTEN_STREAMS[1], plan.listen_soak_seconds)
    with stage_server(tag, "listen", entry, out) as server:
        server.start()
        pid, url = server.process.pid, server.base_url
        ws_url = url.replace("http://", "ws://")
        window_s = httpx.post(f"{url}/info", timeout=30).json()["feature_settings"]["clip_seconds"]
        loads.http_load(f"{url}/classify", *body, 4, 1.0)
        entry["latency"] = listen.streams(ws_url, LISTEN_STREAMS[0], plan.listen_seconds, window_s)
        loads.wait_idle(url)
        entry["memory_after_latency"] = tree_memory(pid)
        # Warm-up at the soak's own concurrency, as the lean stage judges memory after its warm-up: the
        # workers' RSS rises for the first minutes of 64 streams, then stays (native memory filling once;
        # docs/performance.md, "Live streams and memory"). An 8-s warm-up measured that rise as growth.
        entry["warmup"] = listen.streams(ws_url, LISTEN_STREAMS[1], plan.listen_warmup_seconds, window_s)
        loads.wait_idle(url)
        entry["memory_before"] = tree_memory(pid)
        statuses: list[int] = []
        stop = threading.Event()

        def other_routes() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.wait(1.0):
                    try:
                        statuses.append(client.post("/classify", content=body[0],
                                                    headers={"content-type": body[1]}).status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        beside = threading.Thread(target=other_routes)
        beside.start()
        try:
            entry["soak"] = listen.streams(ws_url, LISTEN_STREAMS[1], plan.listen_soak_seconds, window_s)
        finally:
            stop.set()
            beside.join()
        entry["other_requests"] = {"sent": len(statuses), "ok": statuses.count(200)}
        loads.wait_idle(url)
        entry["memory_after"] = tree_memory(pid)
        lat = entry["latency"]
        log.info("  lag p50 %.1f ms, p95 %.1f ms at %d streams; RSS %.0f after them, %.0f after a warm-up at %d, "
                 "%.0f MiB after %g s of them, %d dropped", lat.get("p50_ms", float("nan")),
                 lat.get("p95_ms", float("nan")), LISTEN_STREAMS[0], entry["memory_after_latency"]["rss_mb"],
                 entry["memory_before"]["rss_mb"], LISTEN_STREAMS[1], entry["memory_after"]["rss_mb"],
                 plan.listen_soak_seconds, entry["soak"]["dropped"])


def bento(tag: str, body: tuple[bytes, str], out: Path, results: dict) -> None:
    log.info("bento: build, export, import into an empty home, serve")
    try:
        results["bento"] = startup.bento_cold_start(tag, Settings().layout()[0], body, out)
    except Exception as e:  # noqa: BLE001
        results["bento"] = {"failed": f"{type(e).__name__}: {e}"}
        log.exception("  bento failed")


def image_stage(plan: Plan, results: dict) -> None:
    from bench import container

    log.info("image: cold starts of the image `make image` built, then one container under load")
    try:
        results["image"] = container.measure(starts=2 if plan is QUICK else 5, seconds=plan.point_seconds,
                                             warmup_s=plan.warmup_seconds)
    except Exception as e:  # noqa: BLE001
        results["image"] = {"failed": f"{type(e).__name__}: {e}"}
        log.exception("  image failed")


# --- the run -------------------------------------------------------------------------------------


def spark_job(tag: str, n_files: int, audio: bytes) -> dict:
    """`python -m batch.classify` on local[2] over n copies of the bench clip: files/s end to end
    (JVM and Python worker start-up included, as a user sees it)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(n_files):
            (folder / f"clip{i:05d}.wav").write_bytes(audio)
        command = [sys.executable, "-m", "batch.classify", str(folder), str(Path(tmp) / "out.parquet"),
                   "--model", tag, "--master", "local[2]"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"})
        wall = time.perf_counter() - start
    if done.returncode != 0:
        log.error("spark job failed: %s", done.stderr[-2000:])
        return {"failed": done.stderr[-500:]}
    log.info("spark: %d files in %.1f s", n_files, wall)
    return {"files": n_files, "seconds": wall, "files_per_s": n_files / wall, "master": "local[2]"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="short stages (a few minutes) to check the harness")
    parser.add_argument("--model", default="sound-resnet:latest", help="model tag (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output directory (default bench/results)")
    parser.add_argument("--skip", default="", help=f"comma-separated stages to leave out: {','.join(STAGES)}")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(STAGES):
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "bentoml", "soundclassifier"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()

    from soundclassifier.store import load_model

    tag = resolve_tag(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            "model": tag, "quick": args.quick, "plan": plan.__dict__, "started": datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]),
            "http_client": "wrk (bench/post.lua)" if loads.have_wrk() else "asyncio httpx (wrk not installed)",
            "clip": f"{CLIP_SECONDS:g} s mono WAV PCM_16 at {CLIP_RATE} Hz", "out": str(args.out), "skipped": sorted(skip),
            **machine(),
        },
        "served": {},
    }  # fmt: skip
    log.info("model %s, %s, %d cores, load %.2f", tag, results["meta"]["cpu"], results["meta"]["cores"],
             results["meta"]["loadavg_start"])
    model = load_model(tag)
    no_torch = raw.no_pytorch(model)  # SOUND_ENGINE=torch would serve another engine: its servers are skipped

    if "raw" not in skip:
        log.info("raw model, in process (%s s per point)", plan.raw_seconds)
        threads = Settings().engine_threads or None  # as the served engine gets them
        results["raw"] = raw.raw_model(model, list(plan.batch_sizes), plan.raw_seconds, threads)
        measured = [(r["best"]["clips_per_s"], label, r["best"]["batch"]) for label, r in results["raw"].items() if "best" in r]
        speed, label, batch = max(measured)
        results["raw_best"] = {"engine": label, "batch": batch, "clips_per_s": speed}
        gc.collect()
    if "features" not in skip:
        log.info("features per clip (%d repeats per format)", plan.feature_repeats)
        results["features"] = raw.features(model, plan.feature_repeats)
        if "raw_best" in results:
            log.info("sharing the cores: %s wide and as streams, alone and beside a feature thread",
                     results["raw_best"]["engine"])
            threads = Settings().engine_threads or None
            results["sharing"] = raw.sharing(model, results["raw_best"]["engine"], plan.raw_seconds * 2,
                                             threads=threads)
    del model
    gc.collect()

    audio = clip_file("WAV")
    body = multipart(audio)
    if "lean" not in skip:  # first: its cold start and memory are measured with nothing else of the run up
        lean(tag, plan, body, args.out, results)
    if "bento" not in skip:
        bento(tag, body, args.out, results)
    if "image" not in skip:
        image_stage(plan, results)
    if not {"http", "grpc", "soak"} <= skip:
        served_sweep(tag, "batching", {}, plan, body, audio, plan.clients, with_http="http" not in skip,
                     with_grpc="grpc" not in skip, with_soak="soak" not in skip, out=args.out, results=results)
    if "nobatch" not in skip:
        served_sweep(tag, "no-batching", {"SOUND_MAX_BATCH_SIZE": "1"}, plan, body, audio, plan.peer_clients,
                     out=args.out, results=results)
    if "torch" not in skip and no_torch:
        results["served"]["torch"] = {"env": {"SOUND_ENGINE": "torch"}, "skipped": no_torch}
    elif "torch" not in skip:
        served_sweep(tag, "torch", {"SOUND_ENGINE": "torch"}, plan, body, audio, plan.peer_clients,
                     out=args.out, results=results)
    if "litserve" not in skip and plan.litserve:
        litserve_sweep(tag, plan, body, results)
    elif "litserve" not in skip:
        results["served"]["litserve"] = {"skipped": "full run only (its start-up would double --quick)"}

    if "interleaved" not in skip:
        try:
            interleaved(tag, plan, body, audio, args.out, results, no_torch)
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, the others are kept
            results["interleaved"] = {"failed": f"{type(e).__name__}: {e}"}
            log.exception("  interleaved failed")

    if "listen" not in skip:
        listen_stage(tag, plan, body, args.out, results)
    if "spark" not in skip:
        results["spark"] = spark_job(tag, plan.spark_files, audio)
        if "raw_best" in results and "files_per_s" in results["spark"]:
            results["spark"]["ratio_to_raw_best"] = results["spark"]["files_per_s"] / results["raw_best"]["clips_per_s"]

    results["figures"] = report.figures(results)
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    results["meta"]["elapsed_s"] = time.perf_counter() - started
    stem = f"bench-{datetime.now():%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}"
    paths = report.write(results, args.out, stem)
    for kind, path in paths.items():
        latest = args.out / f"latest.{kind}"
        latest.unlink(missing_ok=True)
        latest.symlink_to(path.name)
    print(paths["md"].read_text())
    log.info("wrote %s", ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths.values()))
    failed = [name for name, s in results["served"].items() if "failed" in s]
    failed += [stage for stage in ("lean", "bento", "image", "interleaved") if "failed" in results.get(stage, {})]
    soak_errors = results.get("soak", {}).get("errors", 0)
    if failed or soak_errors:
        log.error("failed stages: %s; soak errors: %d", failed or "none", soak_errors)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
