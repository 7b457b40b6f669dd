"""Hostile and careless clients against the real `bentoml serve` (the session's `served` fixture,
limits 60 s and 5 MB per clip): every one gets a 4xx (or a gRPC status) naming the problem, fast,
and the served tree's memory stays where it was. The slow cases (soaks, slow clients) live in
`make bench`.
"""

from __future__ import annotations

import asyncio
import io
import time

import grpc
import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from soundclassifier.config import Settings
from testkit import audiofiles as af

pytestmark = pytest.mark.slow
MB = 2**20


def process_rss(pid: int) -> dict[int, int]:
    """RSS of each process of the tree rooted at `pid`, by pid."""
    root = psutil.Process(pid)
    return {p.pid: p.memory_info().rss for p in [root, *root.children(recursive=True)]}


def tree_rss(pid: int) -> int:
    return sum(process_rss(pid).values())


def flac(seconds: float, rate: int, channels: int, value: float = 0.25) -> bytes:
    """Constant samples: FLAC stores them in almost nothing (a decompression bomb)."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        block = np.full((rate, channels), value, dtype=np.float32)
        for _ in range(int(seconds)):
            f.write(block)
    return buf.getvalue()


def noisy_flac(seconds: int, rate: int) -> bytes:
    """Noise (FLAC cannot shrink it): a real recording's decoding and resampling work."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write((0.1 * rng.standard_normal(rate)).astype(np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.base_url, timeout=120) as client:
        client.post("/classify", files={"audio": ("warm.wav", af.wav_sine(seconds=5.0))}).raise_for_status()
        yield client


@pytest.fixture(scope="module")
def rss_before(http, served):
    """The served tree's RSS once warm, and the same after every test of this module."""
    before = tree_rss(served.process.pid)
    yield before
    after = tree_rss(served.process.pid)
    assert after <= 1.25 * before, f"RSS {before / MB:.0f} MB before the hostile tests, {after / MB:.0f} after"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """78 KB of FLAC announcing 20 s of 192 kHz x 8 channels: 30.7 M samples (123 MB as float32),
    within the duration limit, beyond the samples budget."""
    data = flac(20, 192_000, 8)
    assert len(data) < 100_000
    return data


def timed_post(http, route, files, data=None) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    r = http.post(route, files=files, data=data or {})
    return r, time.perf_counter() - start


def test_a_decompression_bomb_is_refused_before_decoding(http, served, rss_before, bomb):
    before = tree_rss(served.process.pid)
    r, seconds = timed_post(http, "/classify", {"audio": ("bomb.flac", bomb)})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert f"{Settings().max_samples:,} samples" in r.json()["detail"]
    items, _ = timed_post(http, "/classify_batch", [("audio", (f"bomb{i}.flac", bomb)) for i in range(4)])
    assert items.status_code == 200 and [i["error"] for i in items.json()] == ["too_large"] * 4
    assert seconds < 2.0
    assert tree_rss(served.process.pid) - before < 64 * MB


def test_a_timeline_over_its_window_budget_is_refused_before_any_window(http, rss_before):
    data = flac(30 * 60, 8000, 1)  # 30 minutes at a hop of 0.25 s: 7,181 windows
    r, seconds = timed_post(http, "/timeline", {"audio": ("long.flac", data)}, {"hop_s": "0.25"})
    assert r.status_code == 413 and "windows" in r.json()["detail"], r.text
    assert f"{Settings().max_timeline_windows:,} windows" in r.json()["detail"]
    assert seconds < 2.0


def test_a_timeline_over_its_work_budget_is_refused_before_any_window(http, rss_before):
    """Issue 32: windows at a high rate cost their samples, not one window each. 150 s of 192 kHz x 8
    channels in 0.25-s hops: 581 windows (within 6,000), 7.7 M samples each (within the samples
    budget), 4.5 G samples to decode and resample in all: over the work budget."""
    data = flac(150, 192_000, 8)
    r, seconds = timed_post(http, "/timeline", {"audio": ("wide.flac", data)}, {"hop_s": "0.25"})
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text
    assert f"{Settings().max_timeline_work_samples:,} samples" in r.json()["detail"], r.text
    assert seconds < 2.0


def test_a_rate_above_192_khz_is_refused_naming_it(http, rss_before):
    data = af.encode(af.sine(440.0, 0.5, 768_000), 768_000, "WAV", "PCM_16")
    for route in ("/classify", "/timeline"):
        r, seconds = timed_post(http, route, {"audio": ("ultra.wav", data)})
        assert r.status_code == 415 and "768,000 Hz" in r.json()["detail"], r.text
        assert seconds < 2.0


@pytest.mark.parametrize("route", ["/classify", "/classify_batch", "/timeline", "/spectrogram"])
@pytest.mark.parametrize(
    "fields",
    [{"top_k": "9" * 5000}, {"top_k": "[" * 100_000}, {"hop_s": "9" * 5000}, {"anything": "[" * 100_000}],
    ids=["long-number", "nested-top_k", "long-hop", "nested-extra"],
)
def test_malformed_text_fields_are_400_on_every_upload_route(http, rss_before, route, fields):
    r, _ = timed_post(http, route, {"audio": ("a.wav", af.wav_sine())}, fields)
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text


@pytest.mark.parametrize("name", ["a" * 300 + ".wav", "語" * 90 + ".wav"], ids=["ascii", "cjk"])
def test_an_overlong_file_name_is_400(http, rss_before, name):
    r, _ = timed_post(http, "/timeline", {"audio": (name, af.wav_sine())})
    assert r.status_code == 400 and "file name" in r.json()["detail"], r.text


def test_info_refuses_a_body_it_does_not_take(http, rss_before):
    assert http.post("/info", data={"a": "b"}).status_code == 415
    assert http.post("/info", content=b"x" * (1 << 20), headers={"content-type": "application/json"}).status_code == 413
    assert http.post("/info", json={}).status_code == 200


def test_a_grpc_stream_of_empty_chunks_is_cut_off(served, rss_before):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.SoundClassifierStub(channel)
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as e:
            stub.ClassifyStream(pb.AudioChunk(data=b"") for _ in range(100_000))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "messages" in e.value.details()
        assert time.perf_counter() - start < 10


def test_the_server_still_answers(http, rss_before):
    r = http.post("/classify", files={"audio": ("ok.wav", af.wav_sine(seconds=2.0))})
    assert r.status_code == 200 and r.json()["label"]


def test_no_served_process_loads_pytorch(served):
    """Serving needs neither torch nor torchaudio nor fastai (issue 21): none of the served tree's
    processes maps libtorch, although this test environment has it installed."""
    root = psutil.Process(served.process.pid)
    for process in [root, *root.children(recursive=True)]:
        maps = open(f"/proc/{process.pid}/maps").read()
        assert "libtorch" not in maps and "libc10" not in maps, process.cmdline()


def open_file_bytes(pid: int) -> int:
    """Bytes in the regular files the served tree holds open, deleted temporary files included
    (/proc/PID/fd/N still stats them): the disk a request's spooled upload takes."""
    import os
    import stat

    total = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        fd_dir = f"/proc/{p.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class Peaks:
    """While a request runs (sampled every 10 ms): the largest peak RSS growth of any one process of
    the served tree, and the tree's peak open-file bytes. A request is served by one worker, so its
    growth is that worker's; summing the tree would add the other processes' own drift to it."""

    def __init__(self, served):
        self.pid = served.process.pid

    def __enter__(self) -> Peaks:
        import threading

        self.base = process_rss(self.pid)
        self.peak = dict(self.base)
        self.base_disk = self.disk = open_file_bytes(self.pid)
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            for pid, rss in process_rss(self.pid).items():
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.disk = max(self.disk, open_file_bytes(self.pid))
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._sampler.join()

    @property
    def rss_growth(self) -> int:
        return max(peak - self.base.get(pid, 0) for pid, peak in self.peak.items())


def sine_wav(rate: int, seconds: float, channels: int) -> bytes:
    t = np.arange(int(rate * seconds), dtype=np.float32) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return af.encode(np.stack([wave] * channels, axis=1), rate, "WAV", "PCM_16")


def test_a_large_timeline_upload_costs_a_fraction_of_its_size_in_memory_and_once_on_disk(http, served, rss_before):
    """Issue 18: peak RSS growth per request <= 1.5x a large upload (it was 3.8x: the guard's parse,
    BentoML reading the file whole, the bytes), and disk <= 1x (it was 2x: the guard's copy, then
    BentoML's spool). The recording stays where the multipart parser spooled it and the timeline
    reads it a window at a time."""
    data = sine_wav(48_000, 330, 2)  # 63 MB
    with Peaks(served) as peaks:
        r = http.post("/timeline", files={"audio": ("long.wav", data)}, data={"hop_s": "5"})
    assert r.status_code == 200, r.text
    assert len(r.json()["windows"]) == 66
    growth = peaks.rss_growth
    assert growth <= min(256 * MB, 1.5 * len(data)), f"peak RSS grew {growth / MB:.0f} MB for a {len(data) / MB:.0f} MB upload"
    disk = peaks.disk - peaks.base_disk
    assert 0.9 * len(data) <= disk <= 1.0 * len(data) + MB, f"{disk / MB:.0f} MB on disk for a {len(data) / MB:.0f} MB upload"


def test_a_long_clip_costs_a_block_and_a_window_in_memory(http, served, rss_before):
    """Issue 18: /classify decodes a long clip a block at a time from where the multipart parser
    spooled it, keeping only its loudest window. Decoded whole, a 25 MB clip took 283 MB (the
    samples as float32, the float64 energies); read into bytes first and then decoded in blocks,
    36 MB (1.47x). Measured against a baseline taken here, alternately (issue 32: a fixed bound
    failed once in seven runs on what the allocator kept): a 2-s clip's peak growth is the
    request's fixed working set, and the 52-s clip at the session server's limits may cost at
    most its upload once plus 4 MB more (decoded whole, it would cost 10 MB of float32 samples
    and 20 MB of float64 energies more)."""
    data = sine_wav(48_000, 52, 1)  # 5.0 MB, 52 s: within the 60 s and 5 MB limits
    short = sine_wav(48_000, 2, 1)
    assert len(data) <= Settings(max_upload_mb=5).max_upload_mb * MB
    growth: dict[str, list[int]] = {"short": [], "long": []}
    for _ in range(5):
        for name, clip in (("short", short), ("long", data)):
            with Peaks(served) as peaks:
                r = http.post("/classify", files={"audio": ("clip.wav", clip)})
            assert r.status_code == 200, r.text
            growth[name].append(peaks.rss_growth)
    short_mb, long_mb = (float(np.median(growth[k][1:])) / MB for k in ("short", "long"))  # the first warms up
    assert long_mb - short_mb <= len(data) / MB + 4, (
        f"peak RSS grew {long_mb:.1f} MB for the {len(data) / MB:.1f} MB clip, {short_mb:.1f} MB for a 2-s one: {growth}")


# --- memory that comes back: a server of its own, as `make serve` runs it -------------------------

RETURN_WITHIN_S = 30.0
RETURN_RATIO = 1.25


@pytest.fixture(scope="module")
def plain_server(tiny_model_tag):
    """`bentoml serve` with the service's defaults (2 workers here) and none of the allocator
    settings the session's `served` fixture passes: what the service does by itself is measured.
    gRPC streams idle out after 3 s instead of 30, to keep the test short."""
    from testkit.server import ServedService, free_port

    with ServedService(tiny_model_tag, grpc_port=free_port(), env={"SOUND_GRPC_IDLE_S": "3"}) as server:
        assert not any(k.startswith("MALLOC_") for k in server.environment()), "the allocator must be the default"
        yield server


async def _idle_grpc_streams(port: int, streams: int = 64, chunk: int = 4 * MB) -> list:
    """`streams` ClassifyStream and Timeline calls over 8 channels, each sending one 4 MiB chunk and
    then nothing until the server's idle limit ends it."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    data = b"\1" * chunk

    async def one(i: int):
        stub = pb_grpc.SoundClassifierStub(channels[i % 8])
        timeline = i % 2 == 1

        async def chunks():
            yield pb.TimelineChunk(data=data) if timeline else pb.AudioChunk(data=data)
            await asyncio.Event().wait()  # silent until the server gives up on it

        try:
            await (stub.Timeline if timeline else stub.ClassifyStream)(chunks(), timeout=60)
        except grpc.aio.AioRpcError as e:
            return e.code()

    try:
        return await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        for channel in channels:
            await channel.close()


def _large_grpc_timeline(port: int, total: int) -> pb.TimelineResponse:
    """A Timeline stream of `total` bytes: a 60-s WAV, then zeros its header does not announce (the
    server spools all of it before reading the recording)."""
    wav = af.encode(af.noise(60.0, 44100, seed=3), 44100, "WAV", "PCM_16")

    def chunks():
        sent = 0
        for i in range(0, len(wav), MB):
            yield pb.TimelineChunk(data=wav[i : i + MB], hop_s=2.5 if i == 0 else 0)
            sent += len(wav[i : i + MB])
        while sent < total:
            yield pb.TimelineChunk(data=bytes(MB))
            sent += MB

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return pb_grpc.SoundClassifierStub(channel).Timeline(chunks(), timeout=300)


def test_the_served_tree_gives_back_what_hostile_requests_took(plain_server):
    """Issue 32: a 2-worker tree went from 485 to 1000 MiB over a hostile suite and stayed there
    (idle gRPC streams +135 MiB in one worker, a 256 MB gRPC Timeline +69, a high-rate /timeline
    +94), held by glibc's free lists and by the reference cycles aborted calls leave. Within 30 s
    of the last answer the tree is back within 1.25x of its warmed-up size."""
    from bench.hostile import cases

    server = plain_server
    pid = server.process.pid
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        # Warm: every route once, and a timeline of full batches (the engine keeps buffers per batch size).
        for _ in range(2):
            client.post("/classify", files={"audio": ("w.wav", af.wav_sine(seconds=5.0))}).raise_for_status()
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                pb_grpc.SoundClassifierStub(channel).Classify(pb.ClassifyRequest(audio=af.wav_sine(seconds=5.0)))
        client.post("/timeline", files={"audio": ("w.wav", af.encode(af.noise(60.0, seed=1)))},
                    data={"hop_s": "1"}).raise_for_status()
        client.post("/spectrogram", files={"audio": ("w.wav", af.wav_sine())}).raise_for_status()
        warm = tree_rss(pid)

        codes = asyncio.run(_idle_grpc_streams(server.grpc_port))
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert len(_large_grpc_timeline(server.grpc_port, 256 * MB).windows) == 23
        high_rate = noisy_flac(60, 192_000)
        r = client.post("/timeline", files={"audio": ("high.flac", high_rate)}, data={"hop_s": "0.25"})
        assert r.status_code == 200 and len(r.json()["windows"]) == 221, r.text[:300]
        for case in cases(Settings()):
            try:
                r = client.post(case.route, files=case.files, data=case.data)
            except httpx.HTTPError:
                assert case.closed_early_ok, case.name
                continue
            assert r.status_code in case.statuses, (case.name, r.status_code, r.text[:300])
        peak = tree_rss(pid)
        last = time.monotonic()

    seen = []
    while time.monotonic() - last < RETURN_WITHIN_S:
        seen.append((round(time.monotonic() - last, 1), round(tree_rss(pid) / MB)))
        if seen[-1][1] * MB <= RETURN_RATIO * warm:
            break
        time.sleep(1.0)
    report = f"warm {warm / MB:.0f} MiB, {peak / MB:.0f} after the requests, then (s, MiB) {seen}"
    print(report)
    assert seen[-1][1] * MB <= RETURN_RATIO * warm, report
