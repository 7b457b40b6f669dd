"""Command-line client: classify files with a running service and print a readable table.

    classify dog.wav rain.flac --url http://localhost:3000 --top-k 3
    python -m serving.client dog.wav            # the same, without the console script

Exit code 0 when every file was classified, 1 when any file was refused (its reason is printed),
2 when the service could not be reached or answered with a server error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="audio files (WAV, FLAC, OGG, MP3)")
    p.add_argument("--url", default="http://localhost:3000", help="service address (default %(default)s)")
    p.add_argument("--top-k", type=int, default=3, help="labels per file (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    a = p.parse_args(argv)

    refused = 0
    width = max(len(str(f)) for f in a.files)
    with httpx.Client(base_url=a.url, timeout=a.timeout) as client:
        for path in a.files:
            try:
                data = path.read_bytes()
            except OSError as e:
                print(f"{str(path):<{width}}  error: cannot read ({e.strerror})")
                refused += 1
                continue
            try:
                r = client.post("/classify", files={"audio": (path.name, data)}, data={"top_k": str(a.top_k)})
            except httpx.HTTPError as e:
                print(f"cannot reach {a.url}: {e}", file=sys.stderr)
                return 2
            if r.status_code >= 500:
                print(f"{str(path):<{width}}  server error {r.status_code}: {r.text[:200]}", file=sys.stderr)
                return 2
            body = r.json()
            if r.status_code != 200:
                detail = body.get("detail") if isinstance(body, dict) else body
                print(f"{str(path):<{width}}  refused ({r.status_code}): {detail}")
                refused += 1
                continue
            top = "  ".join(f"{t['label']} {t['probability']:6.1%}" for t in body["top"])
            print(f"{str(path):<{width}}  {body['duration_s']:6.2f} s  {top}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
