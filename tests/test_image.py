"""The Bento's image, run: what `make image` built, not the source tree.

    make test-image                                              # builds the image, then these tests
    PYTHONPATH=. .venv/bin/python -m pytest -m image tests/test_image.py   # on the image built last

The image is sound_classifier:latest (SOUND_IMAGE overrides), started with docker, podman or buildah
(bench/container.py: docker and podman with a read-only root and a tmpfs on /tmp; buildah, where
no OCI runtime can start, with its root's folders bind-mounted read-only over themselves and every
file it wrote listed). Skipped only where no runtime is installed; where one is and no image was
built, the tests fail and say to run `make image`. The source tree's answers come from a real
`bentoml serve service:SoundClassifier` on the model copied out of the image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import yaml
from websockets.sync.client import connect

from bench.container import IMAGE, ImageContainer, find_runtime, has_image, image_config
from testkit.server import ServedService, free_port

pytestmark = [pytest.mark.image, pytest.mark.served]

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP = REPO_ROOT / "data" / "esc10" / "audio" / "2-100786-A.ogg"  # a 5-s ESC-10 recording: rooster
RAIN = REPO_ROOT / "data" / "esc10" / "audio" / "2-101676-A.ogg"  # and another: rain
DEPLOYMENT = REPO_ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml"
BENTO_MODELS = "/home/bentoml/bento/models"  # $BENTO_PATH/models: the Bento's own model store


def k8s_pod() -> dict:
    return yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def runtime() -> str:
    image = os.environ.get("SOUND_IMAGE", IMAGE)
    found = find_runtime()
    if found is None:
        pytest.skip(f"no container runtime here (docker with a running engine, podman or buildah) to run {image}: "
                    "`make image` installs buildah where apt-get can, then builds it")
    if not has_image(found, image):
        pytest.fail(f"{found} holds no image {image}: build it with `make image` (or run `make test-image`)")
    return found


@pytest.fixture(scope="module")
def image(runtime) -> str:
    return os.environ.get("SOUND_IMAGE", IMAGE)


@pytest.fixture(scope="module")
def container(runtime, image):
    with ImageContainer(image, runtime=runtime, http_port=free_port(), grpc_port=free_port()) as c:
        c.start()
        c.wait_for("/readyz")
        yield c


@pytest.fixture(scope="module")
def source(container, tmp_path_factory):
    """The source tree's server on the very model the image holds, copied out of it into a store of
    its own (the suite's store may import the same tag from bentos/: tests/test_shipped_model.py)."""
    tag = httpx.post(f"{container.base_url}/info", timeout=30).json()["model"]
    name, version = tag.split(":")
    home = tmp_path_factory.mktemp("image-home")
    copied = tmp_path_factory.mktemp("image-model") / version
    container.copy_out(f"{BENTO_MODELS}/{name}/{version}", copied)
    (home / "models" / name).mkdir(parents=True)
    shutil.move(str(copied), home / "models" / name / version)
    with ServedService(tag, grpc_port=free_port(), bentoml_home=home) as server:
        yield server


def post(base_url: str, route: str, **fields) -> dict:
    r = httpx.post(f"{base_url}{route}", files={"audio": (CLIP.name, CLIP.read_bytes())}, data=fields, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def same_top(a: list[dict], b: list[dict]) -> None:
    assert [s["label"] for s in a] == [s["label"] for s in b]
    np.testing.assert_allclose([s["probability"] for s in a], [s["probability"] for s in b], atol=1e-4)


def test_the_entry_point_runs_as_the_non_root_user_the_manifests_name(runtime, image, container):
    config = image_config(runtime, image)
    assert config["User"] == "bentoml"
    served = container.served_pid()
    assert served is not None
    tree = [psutil.Process(served), *psutil.Process(served).children(recursive=True)]
    assert len(tree) >= 2, "bentoml serve and at least one worker"
    uids = {uid for p in tree for uid in p.uids()}
    pod = k8s_pod()["securityContext"]
    assert uids == {pod["runAsUser"]}, uids
    assert {gid for p in tree for gid in p.gids()} == {pod["runAsGroup"]}


def test_probes_answer(container):
    for path in ("/readyz", "/livez"):
        assert httpx.get(f"{container.base_url}{path}", timeout=10).status_code == 200, path


def test_classify_and_timeline_answer_as_the_source_tree_does(container, source):
    image, tree = post(container.base_url, "/classify", top_k="5"), post(source.base_url, "/classify", top_k="5")
    assert image["model"] == tree["model"] and image["label"] == tree["label"]
    same_top(image["top"], tree["top"])
    image, tree = post(container.base_url, "/timeline", hop_s="1.0"), post(source.base_url, "/timeline", hop_s="1.0")
    assert [(w["start_s"], w["end_s"]) for w in image["windows"]] == [(w["start_s"], w["end_s"]) for w in tree["windows"]]
    for a, b in zip(image["windows"], tree["windows"], strict=True):
        same_top(a["top"], b["top"])
    assert [s["label"] for s in image["summary"]] == [s["label"] for s in tree["summary"]]


def test_grpc_classify_answers_as_the_source_tree_does(container, source):
    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
    from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as rpc

    answers = []
    for port in (container.grpc_port, int(source.grpc_port)):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = rpc.SoundClassifierStub(channel).Classify(pb.ClassifyRequest(audio=CLIP.read_bytes(), top_k=5), timeout=60)
            answers.append([{"label": s.label, "probability": s.probability} for s in reply.top])
    same_top(*answers)


def listen(base_url: str) -> list[dict]:
    """The rooster then the rain streamed to /listen as 16-bit mono PCM at their rate in 0.25-s
    frames, then "end": every message, windows and events."""
    import soundfile

    (a, rate), (b, rate_b) = (soundfile.read(f, dtype="int16", always_2d=True) for f in (CLIP, RAIN))
    assert rate == rate_b
    pcm = np.concatenate([a[:, 0], b[:, 0]]).astype("<i2").tobytes()
    frame = rate // 4 * 2  # bytes
    url = base_url.replace("http://", "ws://") + f"/listen?sample_rate={rate}&hop_s=1.0"
    messages = []
    with connect(url, max_size=None) as ws:
        for i in range(0, len(pcm), frame):
            ws.send(pcm[i : i + frame])
        ws.send("end")
        for text in ws:
            messages.append(json.loads(text))
    return messages


def test_listen_answers_as_the_source_tree_does(container, source):
    image, tree = listen(container.base_url), listen(source.base_url)
    windows = [m for m in image if "top" in m]
    assert len(windows) >= 5, image
    for a, b in zip(windows, [m for m in tree if "top" in m], strict=True):
        assert (a["start_s"], a["end_s"], a["label"]) == (b["start_s"], b["end_s"], b["label"])
        same_top(a["top"], b["top"])
    events = [m for m in image if "event" in m]
    assert len(events) >= 2 and events == [m for m in tree if "event" in m]


def test_only_tmp_is_written(container):
    """After the requests above (uploads, timelines, streams): every file the run created or changed
    is under /tmp; and the listing does see /tmp's (so it would see others)."""
    written = container.written()
    assert [p for p in written if p != "tmp" and not p.startswith("tmp/")] == [], written
    if container.runtime == "buildah":  # docker and podman: /tmp is a tmpfs, not in the container's layer
        assert any(p.startswith("tmp/bentoml") for p in written), written


def test_the_root_is_read_only_to_the_served_process(container):
    """What the runtime enforces, seen from inside: the process can write /tmp and nothing else."""
    probe = ("import errno, pathlib\n"
             "for d in ('/tmp', '/app/.venv', '/home/bentoml/bento', '/etc', '/usr', '/var'):\n"
             "    try:\n"
             "        (pathlib.Path(d) / '.probe').write_text('x'); (pathlib.Path(d) / '.probe').unlink(); print(d, 'writable')\n"
             "    except OSError as e:\n"
             "        print(d, errno.errorcode[e.errno])\n")
    out = container.exec(["python", "-c", probe])
    answers = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert answers.pop("/tmp") == "writable"
    # EROFS, not EACCES: read-only for any user, not merely owned by root
    assert set(answers.values()) == {"EROFS"}, answers


def in_flight_at_a_worker(container: ImageContainer, local_port: int) -> bool:
    """Whether a process of the served tree holds the server end of our connection (it accepted it)."""
    root = psutil.Process(container.served_pid())
    for p in [root, *root.children(recursive=True)]:
        try:
            if any(c.raddr and c.raddr.port == local_port for c in p.net_connections(kind="tcp")):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def test_sigterm_drains_a_request_in_flight_within_the_grace_period(runtime, image):
    """SIGTERM (what Kubernetes sends) while a worker is reading a request: the request is still
    answered, and every process has exited within terminationGracePeriodSeconds."""
    grace = k8s_pod()["terminationGracePeriodSeconds"]
    data = CLIP.read_bytes()
    boundary = "soundimageboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.ogg"\r\n\r\n'.encode()
            + data + f"\r\n--{boundary}--\r\n".encode())
    with ImageContainer(image, runtime=runtime, http_port=free_port(), grpc_port=free_port()) as c:
        c.start()
        c.wait_for("/readyz")
        sock = socket.create_connection(("127.0.0.1", c.http_port), timeout=60)
        head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        sock.sendall(head + body[:1000])
        deadline = time.monotonic() + 30
        while not in_flight_at_a_worker(c, sock.getsockname()[1]):
            assert time.monotonic() < deadline, "no worker accepted the connection"
            time.sleep(0.02)
        took: list[float] = []
        stopper = threading.Thread(target=lambda: took.append(c.terminate(grace_s=grace)))
        stopper.start()
        # The rest of the body after the signal: the worker must still read and answer it.
        deadline = time.monotonic() + 30
        while c.served_pid() is not None and not c.signalled and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.sendall(body[1000:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        stopper.join(timeout=grace + 30)
    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 200 OK", answer[:500]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["top"]
    assert took and took[0] < grace, took
