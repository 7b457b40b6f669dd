"""The image's cold start beside the source tree's, and where one start's time goes.

    python -m experiments.image_start --starts 5   # each image start right after a source-tree start
    python -m experiments.image_start --trace      # one image start: its log lines as they arrive

Measured once for docs/container.md ("Cold start and throughput": the paired medians, 6.9 s for the
image and 7.3 s for the source tree, and the traced start's table), to tell what the image adds to
the start from what the service's own start costs. The image's starts are bench/container.py's
(`make bench`'s `image` stage runs those alone): `cold_start` and `ImageContainer`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import clip_file, multipart
from bench.container import IMAGE, POLL_S, RUNTIMES, ImageContainer, cold_start
from testkit.server import REPO_ROOT, free_port

log = logging.getLogger("bench")


def trace_start(image: str = IMAGE, runtime: str | None = None) -> list[tuple[float, str]]:
    """One cold start of `image`, with each line of its log and when it arrived (seconds after the
    start, read every 10 ms), up to the first /classify answer: where the start's time goes."""
    body, content_type = multipart(clip_file("WAV"))
    lines: list[tuple[float, str]] = []
    with ImageContainer(image, runtime=runtime, http_port=free_port(), grpc_port=free_port()) as c:
        answered = threading.Event()
        t0 = time.perf_counter()

        def follow() -> None:
            seen = 0
            while not answered.wait(0.01):
                text = c.log()
                lines.extend((time.perf_counter() - t0, line) for line in text[seen:].splitlines())
                seen = len(text)

        c.start()
        follower = threading.Thread(target=follow)
        follower.start()
        try:
            c.wait_for("/classify", method="POST", content=body, headers={"content-type": content_type})
            lines.append((time.perf_counter() - t0, "(the first /classify answer)"))
        finally:
            answered.set()
            follower.join()
    return sorted(lines, key=lambda line: line[0])


def source_cold_start(starts: int = 5) -> dict:
    """The same clock on the source tree: `bentoml serve service:SoundClassifier` from this checkout
    (its BENTOML_HOME's model, an empty HOME so the engine's speed cache is empty as in the image),
    from launch to its first /classify 200. What the image's figure compares with."""
    body, content_type = multipart(clip_file("WAV"))
    firsts = []
    for _ in range(starts):
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="sound-image-home-") as home:
            env = {**os.environ, "HOME": home, "SOUND_GRPC_PORT": str(free_port())}
            t0 = time.perf_counter()
            server = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", "service:SoundClassifier",
                                       "--host", "127.0.0.1", "--port", str(port)], cwd=REPO_ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                deadline = time.monotonic() + 300
                while True:
                    assert server.poll() is None and time.monotonic() < deadline, "the source tree's server did not answer"
                    try:
                        r = httpx.post(f"http://127.0.0.1:{port}/classify", content=body,
                                       headers={"content-type": content_type}, timeout=30)
                        if r.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(POLL_S)
                firsts.append(time.perf_counter() - t0)
                log.info("  source tree: launch to first /classify: %.2f s", firsts[-1])
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    return {"starts": starts, "first_classify_s": firsts, "median_s": statistics.median(firsts)}


def paired(image: str = IMAGE, starts: int = 5, runtime: str | None = None) -> dict:
    """`starts` pairs, measured under the same load: one source-tree start, then one image start."""
    source, image_starts = [], []
    for _ in range(starts):
        source += source_cold_start(1)["first_classify_s"]
        image_starts += cold_start(image, 1, runtime)["first_classify_s"]
    return {"image": {"first_classify_s": image_starts, "median_s": statistics.median(image_starts)},
            "source_tree": {"first_classify_s": source, "median_s": statistics.median(source)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.image_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=IMAGE, help="image to start (default %(default)s)")
    parser.add_argument("--starts", type=int, default=5, help="pairs of starts (default %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="default: the first that can run here")
    parser.add_argument("--trace", action="store_true", help="one start, its log lines with their arrival times")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.trace:
        for at, line in trace_start(args.image, args.runtime):
            print(f"{at:6.2f}  {line[:160]}")
        return 0
    print(json.dumps(paired(args.image, args.starts, args.runtime), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
