"""A real `bentoml serve` in a subprocess, for integration tests of every front door.

    with ServedService(tag, env={"SOUND_MAX_CLIP_SECONDS": "60"}) as s:
        httpx.get(f"{s.base_url}/info")

The server runs from the repository root (or, for a built Bento, from an empty directory so only
what the Bento packed can be imported) with the caller's environment, which carries the test
store's BENTOML_HOME. Its stdout and stderr go to a temporary file, never to a pipe that could fill
up and stall it; `log()` returns them and every failure to start quotes their tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_TARGET = "service:SoundClassifier"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 6000


# tests/conftest.py sets this for each test: False outside the `served` tier, so a test that
# starts a server without being marked for it fails instead of slowing `make test-fast` down.
servers_allowed = True


def check_servers_allowed(what: str) -> None:
    if not servers_allowed:
        raise RuntimeError(f"this test starts a server ({what}) but is not marked `served`: use a "
                           "fixture tests/conftest.py's SERVER_FIXTURES names, or mark it @pytest.mark.served")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedService:
    """`bentoml serve TARGET --host 127.0.0.1 --port P` for the lifetime of a `with` block.

    Args:
        model_tag (str): model store tag exported as SOUND_MODEL_TAG.
        target (str): what to serve: the source service (default) or a built Bento's tag.
        grpc_port (str): SOUND_GRPC_PORT; "0" (default) leaves the gRPC front door off.
        env (dict | None): extra environment variables, applied last.
        bentoml_home (Path | str | None): the store whose models and Bentos the server reads
            (default: the inherited BENTOML_HOME); the server runs in a home of its own (`_own_home`).
        port (int | None): HTTP port; default: a free one.
        start_timeout_s (float): how long to wait for GET /readyz to answer 200.
        source_root (Path): the checkout served from source (experiments/ab.py serves other revisions).
    """

    def __init__(
        self,
        model_tag: str,
        *,
        target: str = SERVICE_TARGET,
        grpc_port: str | int = "0",
        env: dict[str, str] | None = None,
        bentoml_home: Path | str | None = None,
        port: int | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        source_root: Path = REPO_ROOT,
    ):
        self.model_tag = model_tag
        self.target = target
        self.grpc_port = str(grpc_port)
        self.extra_env = dict(env or {})
        self.bentoml_home = bentoml_home
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.source_root = source_root
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._log_path: Path | None = None

    @property
    def from_source(self) -> bool:
        return self.target == SERVICE_TARGET

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.from_source:
            env["PYTHONPATH"] = str(self.source_root)
        else:  # a Bento must run on what it packed, not on the working tree
            env.pop("PYTHONPATH", None)
        if self.bentoml_home is not None:
            env["BENTOML_HOME"] = str(self.bentoml_home)
        env.setdefault("BENTOML_DO_NOT_TRACK", "True")
        env["SOUND_MODEL_TAG"] = self.model_tag
        env["SOUND_GRPC_PORT"] = self.grpc_port
        env.update(self.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ServedService:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        check_servers_allowed(f"bentoml serve {self.target}")
        self._workdir = tempfile.TemporaryDirectory(prefix="served-")
        self._log_path = Path(self._workdir.name) / "server.log"
        cwd = self.source_root if self.from_source else Path(self._workdir.name)
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        # No other flag: the service itself sets what users would otherwise pass (keep-alive, deadlines).
        command = [str(bentoml_cli), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)]
        env = self.environment()
        env["BENTOML_HOME"] = str(self._own_home(Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")))
        with self._log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches the workers too
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _own_home(self, store: Path) -> Path:
        """A BentoML home of this server's own that reads `store`'s models and Bentos: `bentoml serve`
        empties its home's prometheus_multiproc_dir when it starts, so a second server sharing the
        home wiped the first one's metrics (a test server started mid-session did so to the
        session's server)."""
        home = Path(self._workdir.name) / "bentoml-home"
        home.mkdir()
        for part in ("models", "bentos"):
            (store / part).mkdir(parents=True, exist_ok=True)
            (home / part).symlink_to(store / part, target_is_directory=True)
        return home

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"bentoml serve {self.target} exited with {code} before it was ready:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/readyz", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"/readyz answered {r.status_code}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.25)
        raise TimeoutError(
            f"bentoml serve {self.target} not ready after {self.start_timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def wait_for_log(self, text: str, count: int = 1, timeout_s: float = 120.0) -> None:
        """Wait until the server's log holds `text` at least `count` times (e.g. once per worker)."""
        deadline = time.monotonic() + timeout_s
        while (seen := self.log().count(text)) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} logged {seen} of {count} times:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Ctrl-C the server's process group, then kill it if it is still there after 15 s."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc is not None:
            self._signal(signal.SIGKILL)  # stragglers left in the group after the arbiter exited
        if self._workdir is not None:
            self._final_log = self.log()
            self._workdir.cleanup()
            self._workdir = None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # the group this Popen created, by its id
        except ProcessLookupError:
            pass

    # --- output ----------------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        if self._workdir is None:
            return getattr(self, "_final_log", "")
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log()[-chars:]
