"""Wait for a local server to be ready, then say where it answers (the last lines of `make serve`).

    python -m serving.ready --port 3000 [--pid PID]

Polls `/readyz` (200 once every worker has loaded the model) and prints the page's address, the API
docs' and the gRPC port. Exits 1 if the server process `--pid` ends first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

from soundclassifier.config import Settings


def running(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=3000, help="HTTP port of the server (default %(default)s)")
    p.add_argument("--pid", type=int, help="the server's process: stop waiting if it ends")
    args = p.parse_args(argv)
    while not ready(args.port):
        if not running(args.pid):
            print("the server stopped before it was ready", file=sys.stderr)
            return 1
        time.sleep(0.5)
    grpc_port = Settings().grpc_port
    url = f"http://localhost:{args.port}"
    grpc = f"localhost:{grpc_port}" if grpc_port else "off (SOUND_GRPC_PORT=0)"
    print(f"\nSound classifier ready.\n  page      {url}/\n  API docs  {url}/docs\n  gRPC      {grpc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
