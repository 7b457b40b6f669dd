"""The HTTP front door over a real `bentoml serve` (session fixture `served`, limits 60 s / 5 MB).

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_service.py

Every request goes over TCP to the served process; nothing is mocked. Results are compared with the
same core run in this process on the engine the server chose.
"""

from __future__ import annotations

import asyncio
import io
import re
import struct
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit import audiofiles as af

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

TIMEOUT = httpx.Timeout(120.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UPLOAD_ROUTES = ("/classify", "/classify_batch", "/timeline", "/spectrogram")
API_ROUTES = ("/classify", "/classify_batch", "/timeline", "/spectrogram", "/info")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.base_url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def info(http) -> dict:
    r = http.post("/info")
    assert r.status_code == 200, r.text
    return r.json()


def post_audio(http: httpx.Client, route: str, data: bytes, name: str = "clip.wav", **fields) -> httpx.Response:
    return http.post(route, files={"audio": (name, data, "application/octet-stream")},
                     data={k: str(v) for k, v in fields.items()})


def classify(http: httpx.Client, data: bytes, name: str = "clip.wav", **fields) -> dict:
    r = post_audio(http, "/classify", data, name, **fields)
    assert r.status_code == 200, r.text
    return r.json()


def probabilities(result: dict) -> dict[str, float]:
    return {s["label"]: s["probability"] for s in result["top"]}


def assert_same_probabilities(a: dict, b: dict, tol: float = 1e-4) -> None:
    pa, pb = probabilities(a), probabilities(b)
    assert [s["label"] for s in a["top"]] == [s["label"] for s in b["top"]], (a, b)
    for label, p in pa.items():
        assert abs(p - pb[label]) <= tol, (label, p, pb[label])


def assert_problem(r: httpx.Response, status: int, error: str | None = None) -> dict:
    """A 4xx with a JSON body that says what is wrong."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert body.get("detail"), body
    if error is not None:
        assert body["error"] == error, body
    return body


def metric_samples(http: httpx.Client) -> dict[str, list]:
    """Prometheus samples by sample name (e.g. `sound_forward_batch_size_count`)."""
    r = http.get("/metrics")
    assert r.status_code == 200
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def metric_total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def clip(i: int, seconds: float = 1.0) -> bytes:
    """Clip number i: a sine of its own pitch over noise of its own seed."""
    x = af.sine(freq=150.0 + 97.0 * i, seconds=seconds) + af.noise(seconds, amplitude=0.05, seed=i)
    return af.encode(np.clip(x, -1, 1), af.RATE, "WAV", "PCM_16")


def png_size(png: bytes) -> tuple[int, int]:
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


# --- /classify ----------------------------------------------------------------------------------

FORMATS = {
    "wav": (af.wav_sine, 1.0),
    "flac": (af.flac_sine, 1.0),
    "ogg": (af.ogg_vorbis_sine, 1.0),
    "mp3": (af.mp3_sine, 1.0),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_classify_each_format(http, info, tiny_model_tag, fmt):
    make, seconds = FORMATS[fmt]
    result = classify(http, make(freq=800.0, seconds=seconds), name=f"clip.{fmt}", top_k=3)
    assert result["model"] == tiny_model_tag
    assert result["sample_rate"] == af.RATE
    assert result["duration_s"] == pytest.approx(seconds, abs=0.06 if fmt == "mp3" else 1e-3)
    probs = [s["probability"] for s in result["top"]]
    assert len(probs) == 3
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert {s["label"] for s in result["top"]} <= set(info["labels"])


def test_classify_all_labels_sum_to_one(http, info):
    n = len(info["labels"])
    result = classify(http, af.wav_noise(seed=3), top_k=n)
    assert sorted(s["label"] for s in result["top"]) == sorted(info["labels"])
    assert sum(probabilities(result).values()) == pytest.approx(1.0, abs=1e-4)


def test_classify_default_top_k_is_five(http):
    assert len(classify(http, af.wav_sine(440.0))["top"]) == 5


def test_classify_is_deterministic(http):
    data = clip(7)
    assert classify(http, data, top_k=10) == classify(http, data, top_k=10)


@pytest.fixture(scope="module")
def in_process(info, tiny_model_tag):
    """The same core in this process, on the engine (and precision) the server chose."""
    from soundclassifier.loading import open_classifier

    classifier, report = open_classifier(tiny_model_tag, info["engine"], precision=info["precision"])
    assert report["chosen"] == f"{info['engine']}/{info['precision']}", report
    return classifier


@pytest.mark.parametrize("data", [clip(1), af.wav_noise(seconds=6.0, seed=5), af.wav_silence()],
                         ids=["sine", "long-noise", "silence"])
def test_classify_equals_in_process_core(http, in_process, data):
    over_http = classify(http, data, top_k=10)
    local = in_process.classify(data, top_k=10).model_dump()
    assert over_http["model"] == local["model"]
    assert over_http["duration_s"] == local["duration_s"]
    assert over_http["sample_rate"] == local["sample_rate"]
    assert_same_probabilities(over_http, local)


@pytest.mark.parametrize("data,seconds", [(af.wav_silence(), 1.0), (af.wav_sine(seconds=0.2), 0.2)],
                         ids=["silence", "0.2s"])
def test_classify_silence_and_short_clip(http, data, seconds):
    result = classify(http, data, top_k=2)
    assert result["duration_s"] == pytest.approx(seconds, abs=1e-3)
    assert len(result["top"]) == 2


def test_sync_http_client(served, tiny_model_tag, info, tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(clip(3))
    with bentoml.SyncHTTPClient(served.base_url, timeout=120) as client:
        result = client.classify(audio=path, top_k=4)
        client_info = client.info()
    result = result if isinstance(result, dict) else result.model_dump()
    client_info = client_info if isinstance(client_info, dict) else client_info.model_dump()
    assert result["model"] == tiny_model_tag
    assert len(result["top"]) == 4
    assert client_info["model"] == tiny_model_tag
    assert client_info["labels"] == info["labels"]


# --- /classify_batch ----------------------------------------------------------------------------


def test_classify_batch_fails_only_the_bad_file(http, info):
    files = [("audio", ("good1.wav", clip(1), "audio/wav")),
             ("audio", ("bad.wav", af.text(), "application/octet-stream")),
             ("audio", ("good2.wav", clip(2), "audio/wav"))]
    r = http.post("/classify_batch", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    items = r.json()
    assert len(items) == 3
    good1, bad, good2 = items
    assert bad["result"] is None
    assert bad["error"] == "not_audio" and bad["detail"]
    for item, data in ((good1, clip(1)), (good2, clip(2))):
        assert item["error"] is None and item["detail"] is None
        assert len(item["result"]["top"]) == 3
        assert_same_probabilities(item["result"], classify(http, data, top_k=3))


def test_classify_batch_reports_uploaded_filenames(http):
    files = [("audio", (name, clip(i), "audio/wav")) for i, name in enumerate(["first.wav", "second.wav"])]
    r = http.post("/classify_batch", files=files)
    assert r.status_code == 200, r.text
    assert [item["filename"] for item in r.json()] == ["first.wav", "second.wav"]


# --- /timeline ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_recording() -> tuple[bytes, float]:
    """~23 s: synthetic siren, dog bark, rain, siren, dog bark (seed 0), cut to 23 s."""
    from training.synthetic import SAMPLE_RATE, make_clip

    rng = np.random.default_rng(0)
    labels = ["siren", "dog_bark", "rain", "siren", "dog_bark"]
    samples = np.concatenate([make_clip(label, rng) for label in labels])[: 23 * SAMPLE_RATE]
    return af.encode(samples, SAMPLE_RATE, "WAV", "PCM_16"), len(samples) / SAMPLE_RATE


def expected_starts(duration: float, window: float, hop: float) -> list[float]:
    n = int(np.ceil((duration - window) / hop - 1e-9)) + 1
    return [i * hop for i in range(n)]


@pytest.mark.parametrize("hop", [None, 5.0])
def test_timeline_windows_cover_the_recording(http, info, long_recording, tiny_model_tag, hop):
    data, duration = long_recording
    r = post_audio(http, "/timeline", data, **({} if hop is None else {"hop_s": hop}))
    assert r.status_code == 200, r.text
    t = r.json()
    window = info["feature_settings"]["clip_seconds"]
    step = window / 2 if hop is None else hop
    assert t["model"] == tiny_model_tag
    assert t["duration_s"] == pytest.approx(duration)
    assert t["window_s"] == window and t["hop_s"] == step
    starts = expected_starts(duration, window, step)
    assert [w["start_s"] for w in t["windows"]] == pytest.approx(starts)
    assert [w["end_s"] for w in t["windows"]] == pytest.approx([min(s + window, duration) for s in starts])
    assert t["windows"][-1]["end_s"] == pytest.approx(duration)
    assert all(len(w["top"]) == 3 for w in t["windows"])
    spans = t["summary"]
    assert spans[0]["start_s"] == 0.0 and spans[-1]["end_s"] == pytest.approx(duration)
    for a, b in zip(spans, spans[1:], strict=False):
        assert b["start_s"] <= a["end_s"]  # no gap
    assert [s["label"] for s in spans] == [  # runs of the windows' answers ("unknown" included)
        w["label"] for i, w in enumerate(t["windows"])
        if i == 0 or w["label"] != t["windows"][i - 1]["label"]
    ]


def test_timeline_takes_an_upload_that_passes_the_guard_in_many_pieces(http):
    """A 17 MB body reaches BentoML piece by piece through the upload guard, and whole."""
    rate = 44100
    data = af.encode(af.noise(100.0, rate, amplitude=0.1, seed=3), rate, "WAV", "PCM_16")
    r = post_audio(http, "/timeline", data, hop_s=5.0)
    assert r.status_code == 200, r.text
    assert r.json()["duration_s"] == pytest.approx(100.0)
    assert len(r.json()["windows"]) == 20


def test_timeline_hop_changes_window_count(http, long_recording):
    data, _ = long_recording
    counts = [len(post_audio(http, "/timeline", data, hop_s=h).json()["windows"]) for h in (2.5, 5.0)]
    assert counts == [9, 5]


@pytest.mark.parametrize("hop", [5.5, 0.1, 0, -1])
def test_timeline_bad_hop(http, hop):
    assert_problem(post_audio(http, "/timeline", af.wav_sine(seconds=6.0), hop_s=hop), 400)


# --- /spectrogram -------------------------------------------------------------------------------


def test_spectrogram_png(http):
    import matplotlib.image

    r = post_audio(http, "/spectrogram", clip(4))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_SIGNATURE)
    width, height = png_size(r.content)
    assert width > 0 and height > 0
    image = matplotlib.image.imread(io.BytesIO(r.content), format="png")
    assert image.shape[:2] == (height, width)
    assert image.std() > 0  # not a blank picture


# --- /info --------------------------------------------------------------------------------------


def test_info(info, tiny_model_tag):
    meta = bentoml.models.get(tiny_model_tag).info.metadata
    assert info["model"] == tiny_model_tag
    assert info["labels"] == meta["labels"]
    assert info["feature_settings"] == meta["feature_settings"]
    assert "accuracy" in info["metrics"]
    assert info["engine"] in {"openvino", "onnxruntime", "torch"}
    assert info["limits"]["max_clip_seconds"] == 60 and info["limits"]["max_upload_mb"] == 5


# --- bad input ----------------------------------------------------------------------------------

BAD_AUDIO = {
    "empty": (af.empty, 400, "empty"),
    "random": (af.random_bytes, 415, "not_audio"),
    "text": (af.text, 415, "not_audio"),
    "truncated": (af.truncated_wav, 400, "corrupt"),
    "nan": (af.nan_float_wav, 422, "non_finite"),
}


@pytest.mark.parametrize("route", ["/classify", "/spectrogram", "/timeline"])
@pytest.mark.parametrize("case", BAD_AUDIO)
def test_bad_audio(http, route, case):
    make, status, error = BAD_AUDIO[case]
    assert_problem(post_audio(http, route, make()), status, error)


def quiet_wav(seconds: float, rate: int = 8000) -> bytes:
    return af.encode(af.noise(seconds, rate, amplitude=0.01), rate, "WAV", "PCM_16")


@pytest.mark.parametrize("route", ["/classify", "/spectrogram"])
def test_too_long(http, route):
    body = assert_problem(post_audio(http, route, quiet_wav(61.0)), 413, "too_long")
    assert "60" in body["detail"]


def test_just_under_the_length_limit(http):
    assert classify(http, quiet_wav(59.0))["duration_s"] == pytest.approx(59.0)


@pytest.mark.parametrize("megabytes", [5.5, 6.0, 20.0])
def test_too_large(http, megabytes):
    data = af.random_bytes(int(megabytes * 2**20))
    assert_problem(post_audio(http, "/classify", data), 413, "too_large")


@pytest.mark.parametrize("route", UPLOAD_ROUTES)
def test_bad_requests(http, route):
    # a required field missing, or sent as text (BentoML would fetch a URL given as text)
    assert_problem(http.post(route, files={"sound": ("a.wav", clip(1))}), 400, "bad_request")
    assert_problem(http.post(route, data={"audio": "http://127.0.0.1:9/a.wav"},
                             files={"other": ("x", b"x")}), 400, "bad_request")
    # not multipart at all
    assert_problem(http.post(route, json={"audio": "aGVsbG8="}), 415)
    # multipart that does not parse
    for body, ctype in [(b"garbage", "multipart/form-data; boundary=xyz"),
                        (b"garbage", "multipart/form-data")]:
        assert_problem(http.post(route, content=body, headers={"content-type": ctype}), 400, "bad_request")


@pytest.mark.parametrize("top_k", [0, "abc", -3, 51])
def test_bad_top_k(http, top_k):
    body = assert_problem(post_audio(http, "/classify", clip(1), top_k=top_k), 400)
    assert "top_k" in str(body["detail"])


def test_server_healthy_after_bad_input(http, served):
    for route in UPLOAD_ROUTES:  # one of the worst, again, on every route
        post_audio(http, route, af.truncated_wav())
        post_audio(http, route, af.random_bytes(3 * 2**20))
    assert http.get("/readyz").status_code == 200
    assert len(classify(http, clip(9), top_k=2)["top"]) == 2
    assert served.process.poll() is None


# --- batching under load, and metrics -----------------------------------------------------------


async def burst(base_url: str, files: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(files), max_keepalive_connections=len(files))
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, limits=limits) as client:
        return await asyncio.gather(*(
            client.post("/classify", files={"audio": (f"{i}.wav", data)}, data={"top_k": "10"})
            for i, data in enumerate(files)
        ))


def test_concurrent_burst_is_batched_and_independent(served, http):
    files = [clip(i) for i in range(64)]
    alone = classify(http, files[0], top_k=10)
    before = metric_samples(http)
    responses = asyncio.run(burst(served.base_url, files))
    after = metric_samples(http)

    assert [r.status_code for r in responses] == [200] * 64, [r.text for r in responses if r.status_code != 200][:3]
    assert_same_probabilities(responses[0].json(), alone)  # batch partners change nothing
    for i in (13, 63):
        assert_same_probabilities(responses[i].json(), classify(http, files[i], top_k=10))

    n = metric_total(after, "sound_forward_batch_size_count") - metric_total(before, "sound_forward_batch_size_count")
    clips = metric_total(after, "sound_forward_batch_size_sum") - metric_total(before, "sound_forward_batch_size_sum")
    assert clips == 64
    assert clips / n > 1, f"{clips:.0f} clips in {n:.0f} forward passes: nothing was merged"
    assert metric_total(after, "sound_forward_batch_size_sum") / metric_total(after, "sound_forward_batch_size_count") > 1


def test_metrics(http, info):
    before = metric_samples(http)
    for make, _, _ in BAD_AUDIO.values():
        post_audio(http, "/classify", make())
    samples = metric_samples(http)
    for kind in {kind for _, _, kind in BAD_AUDIO.values()}:
        grown = metric_total(samples, "sound_audio_errors_total", kind=kind) - metric_total(
            before, "sound_audio_errors_total", kind=kind)
        assert grown >= 1, kind
    engine = [s for s in samples["sound_engine_info"] if s.value == 1]
    assert [(s.labels["engine"], s.labels["model"]) for s in engine] == [(info["engine"], info["model"])]
    assert metric_total(samples, "sound_forward_batch_size_count") > 0
    assert metric_total(samples, "sound_clips_total", endpoint="classify") > 0
    server_errors = [(s.labels["endpoint"], s.labels["http_response_code"], s.value)
                     for s in samples["bentoml_service_request_total"]
                     if s.labels["http_response_code"].startswith("5") and s.value > 0]
    assert server_errors == []


def test_the_upload_door_answers_as_bentomls_endpoint_did(http, served):
    """The upload routes are answered by serving/door.py from the guard's one parse, behind
    BentoML's outer middlewares: the answer keeps BentoML's headers, the request is counted in its
    request metrics and logged in its access log, and a form its input model refuses is BentoML's 400."""
    before = metric_samples(http)
    r = post_audio(http, "/classify", clip(3), top_k=2)
    assert r.status_code == 200 and len(r.json()["top"]) == 2
    assert r.headers["server"] == "BentoML Service/sound_classifier"
    request_id = r.headers["x-bentoml-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    after = metric_samples(http)
    grown = metric_total(after, "bentoml_service_request_total", endpoint="/classify", http_response_code="200") - \
        metric_total(before, "bentoml_service_request_total", endpoint="/classify", http_response_code="200")
    assert grown == 1
    # The access log line names the route and status, and the same id as the answer's header.
    assert any("path=/classify" in line and "status=200" in line and f"span={request_id}" in line
               for line in served.log().splitlines())


# --- probes and the API description -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/metrics", "/docs.json"])
def test_probes(http, path):
    assert http.get(path).status_code == 200


def test_an_idle_connection_outlives_a_clients_keep_alive(served):
    """A connection idle past BentoML's 5 s default (which equals httpx's own expiry, so a client
    could reuse a connection the server was closing) is still open: the service's SOUND_KEEP_ALIVE_S, with no flag from the launcher."""
    conn = HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        conn.request("GET", "/readyz")
        assert conn.getresponse().read() is not None
        sock = conn.sock
        time.sleep(6.0)
        conn.request("GET", "/readyz")  # on a socket the server closed: BrokenPipe or RemoteDisconnected
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and conn.sock is sock
    finally:
        conn.close()


def test_openapi_lists_the_api(http):
    paths = http.get("/docs.json").json()["paths"]
    for route in API_ROUTES:
        assert route in paths, route


def test_command_line_client_prints_a_table_and_signals_refusals(served, tmp_path):
    good, bad = tmp_path / "tone.wav", tmp_path / "notes.txt"
    good.write_bytes(af.wav_sine(440, 1.0))
    bad.write_bytes(b"just some text, not audio")
    labels = httpx.post(f"{served.base_url}/info", timeout=30).json()["labels"]
    run = [sys.executable, "-m", "serving.client", "--url", served.base_url, "--top-k", "2"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "tone.wav" in ok.stdout and any(label in ok.stdout for label in labels) and "%" in ok.stdout
    mixed = subprocess.run([*run, str(good), str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert mixed.returncode == 1
    assert "notes.txt" in mixed.stdout and "refused (415)" in mixed.stdout
    down = subprocess.run([*run[:3], "--url", "http://127.0.0.1:9", str(good)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert down.returncode == 2 and "cannot reach" in down.stderr
