"""The Bento's image, run: a container of what `make image` built, and its cold start.

    python -m bench.container                               # 5 cold starts of sound_classifier:latest
    python -m bench.container --image sound_classifier:abc --starts 5 --runtime buildah
    python -m bench.container --starts 1 --load-seconds 10  # then one container at 1, 8 and 32 clients

`ImageContainer` starts the image's own entry point, user and environment with the first runtime
found (SOUND_IMAGE_RUNTIME picks one):
  docker, podman  `run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges`,
                  ports published on 127.0.0.1: the root file system read-only and /tmp writable, as
                  deploy/kubernetes runs it. Stopped with `stop` (SIGTERM, then SIGKILL after the grace).
  buildah         `buildah from` (a container named sound-image-run-*), then `buildah run --isolation
                  chroot`: the image's root file system, user, environment and entry point, on this
                  machine's network (no OCI runtime needed: it starts where docker and podman cannot
                  here). buildah has no --read-only: every folder at the root but /tmp (and the
                  kernel's /proc, /sys, /dev, /run) is bind-mounted read-only over itself, and
                  `written()` lists whatever the run still wrote in the container's root. Stopped as a
                  runtime would: SIGTERM to the process the entry point execs (`bentoml serve`),
                  SIGKILL after the grace.

`cold_start` times, per start, the container's start to its first 200 from POST /classify (a
fresh connection every 20 ms, refused until the server listens), then samples the served tree's
memory. With buildah the container is created (`buildah from`, 0.05 s with the overlay driver) and
its root mounted before the clock starts, as a kubelet creates a container before starting it.
`throughput` loads one container at 1, 8 and 32 clients, and `measure` is the stage `make bench`
runs (bench/run.py: `image`). experiments/image_start.py pairs the starts with the source tree's
and traces one start's log.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench import load as loads
from bench.common import clip_file, multipart, tree_memory
from testkit.server import free_port

IMAGE = "sound_classifier:latest"  # what `make image` tags last (deploy/image/build.sh)
RUNTIMES = ("docker", "podman", "buildah")
STOP_GRACE_S = 45  # terminationGracePeriodSeconds of deploy/kubernetes/base/deployment.yaml
POLL_S = 0.02
IN_IMAGE_HTTP, IN_IMAGE_GRPC = 3000, 50051  # the ports the image listens on (docker/podman publish them)
# Left writable under buildah: /tmp (the one place the service writes) and what the kernel and
# buildah mount at every run.
KEEP_WRITABLE = {"tmp", "proc", "sys", "dev", "run"}
# What buildah itself changes in a container's root at every `buildah run`, whatever runs in it
# (`buildah run CONTAINER -- true` changes the folder /run: it mounts its own files there).
BUILDAH_RUN_FILES = {"run", "etc/hosts", "etc/resolv.conf", "etc/hostname", "run/.containerenv"}

log = logging.getLogger("bench")


def engine_answers(runtime: str) -> bool:
    """Whether `runtime` is installed and, for docker, its engine answers (a client alone cannot run)."""
    if shutil.which(runtime) is None:
        return False
    if runtime == "docker":
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    return True


def find_runtime() -> str | None:
    """The runtime to use: SOUND_IMAGE_RUNTIME, else the first of RUNTIMES that can run here."""
    wanted = os.environ.get("SOUND_IMAGE_RUNTIME")
    if wanted:
        return wanted
    return next((r for r in RUNTIMES if engine_answers(r)), None)


def has_image(runtime: str, image: str) -> bool:
    if runtime == "buildah":
        done = subprocess.run(["buildah", "images", "-q", image], capture_output=True, text=True)
        return done.returncode == 0 and bool(done.stdout.strip())
    return subprocess.run([runtime, "image", "inspect", image], capture_output=True).returncode == 0


def image_config(runtime: str, image: str) -> dict:
    """The image's OCI config (User, Env, Entrypoint, ExposedPorts, ...)."""
    if runtime == "buildah":
        done = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)["OCIv1"]["config"]
    done = subprocess.run([runtime, "image", "inspect", image], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)[0]["Config"]


def image_size_mb(runtime: str, image: str) -> float:
    if runtime == "buildah":
        done = subprocess.run(["buildah", "images", "--format", "{{.Size}}", image], capture_output=True, text=True,
                              check=True)
        number, unit = done.stdout.split()[0:2] if " " in done.stdout.strip() else (done.stdout.strip(), "B")
        return float(number) * {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1, "GB": 1e3}[unit]
    done = subprocess.run([runtime, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                          text=True, check=True)
    return int(done.stdout) / 1e6


class ImageContainer:
    """One container of `image`, its HTTP front door on 127.0.0.1:`http_port` and gRPC on `grpc_port`.

    Args:
        image (str): the image (default: what `make image` tagged last).
        runtime (str | None): docker, podman or buildah (default: `find_runtime()`).
        http_port, grpc_port (int): where this machine reaches the service.
        env (dict | None): extra environment variables for the served process.
    Created on `__enter__` (not started), removed on `__exit__`; `start()` starts it.
    """

    def __init__(self, image: str = IMAGE, *, runtime: str | None = None, http_port: int, grpc_port: int,
                 env: dict[str, str] | None = None) -> None:
        self.image, self.runtime = image, runtime or find_runtime()
        if self.runtime is None:
            raise RuntimeError("no container runtime (docker with an engine, podman or buildah)")
        self.http_port, self.grpc_port, self.env = http_port, grpc_port, dict(env or {})
        self.name = f"sound-image-run-{os.getpid()}-{time.monotonic_ns()}"
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None  # time.time() when start() began
        self.signalled = False  # terminate() has sent SIGTERM
        self._root: str | None = None  # buildah: where the container's root is mounted
        self._log = tempfile.NamedTemporaryFile(prefix="sound-image-run-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> ImageContainer:
        if self.runtime == "buildah":
            subprocess.run(["buildah", "from", "--pull-never", "--name", self.name, self.image],
                           capture_output=True, text=True, check=True)
            self._root = subprocess.run(["buildah", "mount", self.name], capture_output=True, text=True,
                                        check=True).stdout.strip()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.runtime == "buildah":
            subprocess.run(["buildah", "umount", self.name], capture_output=True)
            subprocess.run(["buildah", "rm", self.name], capture_output=True)
        else:
            subprocess.run([self.runtime, "rm", "-f", self.name], capture_output=True)
        Path(self._log.name).unlink(missing_ok=True)

    def _buildah_run(self, env: list[str]) -> list[str]:
        """`buildah run` of this container with its root's folders read-only (all but KEEP_WRITABLE)."""
        folders = sorted(d.name for d in Path(self._root).iterdir() if d.is_dir() and not d.is_symlink()
                         and d.name not in KEEP_WRITABLE)
        volumes = [a for d in folders for a in ("--volume", f"{self._root}/{d}:/{d}:ro")]
        return ["buildah", "run", "--isolation", "chroot", *volumes, *[a for e in env for a in ("--env", e)],
                self.name, "--"]

    def command(self) -> list[str]:
        env = [f"{k}={v}" for k, v in self.env.items()]
        if self.runtime == "buildah":
            # Same network as this machine: the service itself takes the ports, on loopback only.
            env += [f"SOUND_GRPC_PORT={self.grpc_port}"]
            entrypoint = image_config("buildah", self.image)["Entrypoint"]
            return [*self._buildah_run(env), *entrypoint, "--host", "127.0.0.1", "--port", str(self.http_port)]
        return [self.runtime, "run", "--name", self.name, "--read-only", "--tmpfs", "/tmp:rw,exec,size=4g",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "-p", f"127.0.0.1:{self.http_port}:{IN_IMAGE_HTTP}", "-p", f"127.0.0.1:{self.grpc_port}:{IN_IMAGE_GRPC}",
                *[a for e in env for a in ("--env", e)], self.image]

    def start(self) -> None:
        self.started_at = time.time()
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def served_pid(self) -> int | None:
        """This machine's pid of the process the entry point became (`bentoml serve`), once it is up."""
        if self.process is None:
            return None
        if self.runtime != "buildah":
            done = subprocess.run([self.runtime, "inspect", "--format", "{{.State.Pid}}", self.name],
                                  capture_output=True, text=True)
            pid = int(done.stdout.strip() or 0) if done.returncode == 0 else 0
            return pid or None
        try:
            below = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for p in below:  # buildah -> (its chroot helper) -> entrypoint.sh, which execs bentoml serve
            try:
                if p.cmdline()[1:3] == ["/app/.venv/bin/bentoml", "serve"] or p.cmdline()[:2] == ["bentoml", "serve"]:
                    return p.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                continue
        return None

    def wait_for(self, path: str = "/readyz", timeout_s: float = 120.0, method: str = "GET",
                 **request) -> httpx.Response:
        """The first 200 answer to `method path`, asked on a fresh connection every POLL_S."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the container exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            try:
                r = httpx.request(method, f"{self.base_url}{path}", timeout=30, **request)
                if r.status_code == 200:
                    return r
                last = r.status_code
            except httpx.TransportError as e:
                last = e
            time.sleep(POLL_S)
        raise TimeoutError(f"no 200 from {path} in {timeout_s} s (last: {last!r}):\n{self.log()[-4000:]}")

    def terminate(self, grace_s: float = STOP_GRACE_S) -> float:
        """Stop it as a runtime does (SIGTERM, SIGKILL after `grace_s`); the seconds it took to exit."""
        start = time.perf_counter()
        if self.process is None or self.process.poll() is not None:
            return 0.0
        if self.runtime == "buildah":
            pid = self.served_pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            self.signalled = True
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only what it started
                self.process.wait()
        else:
            self.signalled = True  # (docker stop signals at once, then waits)
            subprocess.run([self.runtime, "stop", "-t", str(int(grace_s)), self.name], capture_output=True)
            self.process.wait(timeout=30)
        return time.perf_counter() - start

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.terminate(grace_s=15)

    def written(self) -> list[str]:
        """Paths (relative to the root; /tmp's included) this container's run created or changed."""
        if self.runtime != "buildah":
            done = subprocess.run([self.runtime, "diff", self.name], capture_output=True, text=True, check=True)
            return sorted(line.split(None, 1)[1].lstrip("/") for line in done.stdout.splitlines() if line.strip())
        found = []
        for folder, dirs, files in os.walk(self._root):
            rel_folder = os.path.relpath(folder, self._root)
            if rel_folder == ".":
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
            for name in files + dirs:
                rel = os.path.normpath(os.path.join(rel_folder, name))
                st = os.lstat(os.path.join(folder, name))
                if max(st.st_mtime, st.st_ctime) >= self.started_at and rel not in BUILDAH_RUN_FILES:
                    found.append(rel)
        return sorted(found)

    def exec(self, command: list[str]) -> str:
        """Run `command` in the running container (buildah: a second run of it, mounted alike) as the
        image's user; its stdout."""
        if self.runtime == "buildah":
            full = [*self._buildah_run([]), *command]
        else:
            full = [self.runtime, "exec", self.name, *command]
        return subprocess.run(full, capture_output=True, text=True, check=True, timeout=120).stdout

    def copy_out(self, path: str, dest: Path) -> None:
        """Copy `path` (a folder in the image) to `dest` on this machine."""
        if self.runtime == "buildah":
            shutil.copytree(Path(self._root) / path.lstrip("/"), dest)
        else:
            subprocess.run([self.runtime, "cp", f"{self.name}:{path}", str(dest)], check=True, capture_output=True)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")


def cold_start(image: str = IMAGE, starts: int = 5, runtime: str | None = None) -> dict:
    """`starts` cold starts of `image`, one after another: seconds from starting the container to
    its first /classify 200 (a 5-s WAV), and the served tree's memory right after that answer."""
    body, content_type = multipart(clip_file("WAV"))
    runs = []
    for _ in range(starts):
        with ImageContainer(image, runtime=runtime, http_port=free_port(), grpc_port=free_port()) as c:
            t0 = time.perf_counter()
            c.start()
            c.wait_for("/classify", method="POST", content=body, headers={"content-type": content_type})
            first = time.perf_counter() - t0
            pid = c.served_pid()
            runs.append({"first_classify_s": first, "memory": tree_memory(pid) if pid else None})
            log.info("  container start to first /classify: %.2f s, served tree %s MiB", first,
                     f"{runs[-1]['memory']['rss_mb']:.0f}" if pid else "-")
    firsts = [r["first_classify_s"] for r in runs]
    rss = [r["memory"]["rss_mb"] for r in runs if r["memory"]]
    runtime = runtime or find_runtime()
    return {"image": image, "runtime": runtime, "image_mb": image_size_mb(runtime, image), "starts": starts,
            "first_classify_s": firsts, "median_s": statistics.median(firsts),
            "rss_mb_after_first": statistics.median(rss) if rss else None, "runs": runs}


def throughput(image: str = IMAGE, clients: tuple[int, ...] = (1, 8, 32), seconds: float = 15.0,
               warmup_s: float = 3.0, runtime: str | None = None) -> dict:
    """One container of `image` loaded at each of `clients` concurrent clients on POST /classify
    (bench/load.py: wrk where installed), `seconds` each after `warmup_s`: what one pod serves."""
    body = multipart(clip_file("WAV"))
    points = {}
    with ImageContainer(image, runtime=runtime, http_port=free_port(), grpc_port=free_port()) as c:
        c.start()
        c.wait_for("/readyz")
        for n in clients:
            run = functools.partial(loads.http_load, f"{c.base_url}/classify", *body)
            points[str(n)] = loads.measure_point(run, n, seconds, warmup_s, base_url=c.base_url,
                                                 server_pid=c.served_pid()).as_dict()
    return points


def measure(image: str = IMAGE, starts: int = 5, seconds: float = 15.0, warmup_s: float = 3.0) -> dict:
    """The bench stage: `starts` cold starts, then one container's throughput at 1, 8 and 32 clients."""
    runtime = find_runtime()
    if runtime is None or not has_image(runtime, image):
        return {"skipped": f"no image {image} (or no runtime to start it): build it with `make image`"}
    result = cold_start(image, starts, runtime)
    result["throughput"] = throughput(image, seconds=seconds, warmup_s=warmup_s, runtime=runtime)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.container", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=IMAGE, help="image to start (default %(default)s)")
    parser.add_argument("--starts", type=int, default=5, help="cold starts, one after another (default %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: the first that can run here")
    parser.add_argument("--load-seconds", type=float, default=0.0,
                        help="then load one container at 1, 8 and 32 clients this long each (default: no load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = cold_start(args.image, args.starts, args.runtime)
    if args.load_seconds:
        result["throughput"] = throughput(args.image, seconds=args.load_seconds, runtime=args.runtime)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
