"""Cold start and start-up memory: from `bentoml serve` to every worker answering, and the first answer
of a built Bento imported into an empty BentoML home.

`launch` starts a server (testkit.server.ServedService) while a thread samples the RSS of its whole
process tree every 50 ms; once /readyz answers, it opens fresh connections to /readyz until every
worker process has answered one. BentoML's workers share one listening socket and the kernel hands a
new connection to whichever worker accepts first, so which worker answered is read from the
connection itself: the process of the served tree that holds the server end of it (psutil, /proc).
A worker accepts connections only once its service is built (model loaded, engine compiled), so the
time the last of them answers is when the server is ready to its full width.
"""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.common import RssSampler, process_tree
from soundclassifier.loading import SpeedCache
from testkit.server import REPO_ROOT, ServedService

PROBE_INTERVAL_S = 0.02
EVERY_WORKER_TIMEOUT_S = 120.0
BENTOML = str(Path(sys.executable).with_name("bentoml"))

log = logging.getLogger("bench")


def answering_pid(port: int, tree: list[psutil.Process], path: str = "/readyz") -> int | None:
    """GET `path` on a new connection; the pid of the process in `tree` that answered it with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            return None
        local_port = conn.sock.getsockname()[1]  # the connection stays open (keep-alive) while we look
        for process in tree:
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.raddr and c.raddr.port == local_port and c.laddr.port == port for c in connections):
                return process.pid
        return None
    except OSError:
        return None
    finally:
        conn.close()


def every_worker_answered(answers: list[tuple[float, int]], workers: int) -> float | None:
    """When the `workers`-th distinct process first answered, from (seconds since launch, pid) in the
    order they came; None if fewer answered."""
    seen: set[int] = set()
    for at, pid in answers:
        seen.add(pid)
        if len(seen) >= workers:
            return at
    return None


def launch(server: ServedService, workers: int, clip_body: tuple[bytes, str] | None = None,
           speed_cache: SpeedCache | None = None) -> dict:
    """Start `server`, sampling its tree's RSS from launch until every one of `workers` worker
    processes answered /readyz; then (with `clip_body`) the first /classify answer. Returns the
    timings (seconds since launch) and the start-up peak. The server is left running.
    `speed_cache`: the one the server's workers use (default: this user's)."""
    speed_cache = speed_cache or SpeedCache.default()
    cache_before = set(speed_cache.read())
    sampler = RssSampler(lambda: server.process.pid if server.process is not None else None).start()
    t0 = time.perf_counter()
    answers: list[tuple[float, int]] = []
    try:
        server.start()  # returns on the first /readyz 200
        readyz_s = time.perf_counter() - t0
        deadline = time.monotonic() + EVERY_WORKER_TIMEOUT_S
        while every_worker_answered(answers, workers) is None and time.monotonic() < deadline:
            pid = answering_pid(server.port, process_tree(server.process.pid))
            if pid is not None:
                answers.append((time.perf_counter() - t0, pid))
            else:
                time.sleep(PROBE_INTERVAL_S)
    finally:
        memory = sampler.stop()
    result = {
        "readyz_s": readyz_s,
        "workers": workers,
        "every_worker_s": every_worker_answered(answers, workers),
        "worker_first_answer_s": {str(pid): at for at, pid in reversed(answers)},  # each pid's first
        "probes": len(answers),
        "startup_rss": memory,
        # Whether this start measured its engine's speed or found it in the machine's speed cache.
        "speed_cache": "measured at this start" if set(speed_cache.read()) - cache_before else "reused",
    }
    if clip_body is not None:
        body, content_type = clip_body
        r = httpx.post(f"{server.base_url}/classify", content=body, headers={"content-type": content_type}, timeout=60)
        r.raise_for_status()
        result["first_answer_s"] = time.perf_counter() - t0
    log.info("  /readyz after %.1f s, every worker (%d) answering after %s s, start-up peak %.0f MiB (%s)",
             readyz_s, workers, "-" if result["every_worker_s"] is None else f"{result['every_worker_s']:.1f}",
             memory["peak_mb"], result["speed_cache"])
    return result


# --- a built Bento, imported into an empty home --------------------------------------------------


def _bentoml(*args: str, env: dict[str, str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run([BENTOML, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"bentoml {' '.join(args)} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return done.stdout, time.perf_counter() - start


def bento_cold_start(tag: str, workers: int, clip_body: tuple[bytes, str], out: Path) -> dict:
    """`bentoml build` (as `make bento`), `bentoml export`, then into an empty BENTOML_HOME (and an
    empty HOME, so the engine's speed cache is empty too, as on a new replica): `bentoml import` and
    `bentoml serve <bento>` until the first answer. The Bento is deleted from the run's store after
    export; the archive and the fresh homes are temporary."""
    env = {**os.environ, "SOUND_MODEL_TAG": tag, "BENTOML_DO_NOT_TRACK": "True"}
    result: dict = {}
    stdout, result["build_s"] = _bentoml("build", ".", "--output", "tag", env=env)
    bento = stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    result["bento"] = bento
    with tempfile.TemporaryDirectory(prefix="bench-bento-") as tmp:
        archive = Path(tmp) / "sound_classifier.bento"
        try:
            _, result["export_s"] = _bentoml("export", bento, str(archive), env=env)
        finally:
            _bentoml("delete", bento, "-y", env=env)
        result["bento_mb"] = archive.stat().st_size / 2**20
        fresh = {"BENTOML_HOME": str(Path(tmp) / "bentoml-home"), "HOME": str(Path(tmp) / "home")}
        Path(fresh["HOME"]).mkdir()
        _, result["import_s"] = _bentoml("import", str(archive), env={**env, **fresh})
        server = ServedService(tag, target=bento, env={"HOME": fresh["HOME"]}, bentoml_home=fresh["BENTOML_HOME"],
                               start_timeout_s=300)
        cache = SpeedCache(Path(fresh["HOME"]) / SpeedCache.default().path.relative_to(Path.home()))
        try:
            result.update(launch(server, workers, clip_body, cache))
        finally:
            server.stop()
            (out / "server-bento.log").write_text(server.log())
    result["import_to_first_answer_s"] = result["import_s"] + result["first_answer_s"]
    log.info("  bento %s: built in %.0f s, %.0f MiB, imported in %.1f s, first answer %.1f s after `bentoml serve`",
             bento, result["build_s"], result["bento_mb"], result["import_s"], result["first_answer_s"])
    return result
