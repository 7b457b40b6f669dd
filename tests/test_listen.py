"""Live listening: the core session in process, then WebSocket /listen and gRPC Listen against a real
`bentoml serve` (the session's `served` fixture, and one of its own with small stream limits)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import soundfile as sf
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from soundclassifier.config import Settings
from soundclassifier.errors import AudioError, ErrorKind, IdleError, InvalidArgumentError, OverloadedError
from soundclassifier.loading import open_classifier
from soundclassifier.pipeline import Pipeline
from testkit import audiofiles as af

RATE = 22050  # the synthetic clips' rate
HOP = 0.5


def pcm(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def frames_of(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


def as_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


class Recording:
    """A batcher that records the size of every forward pass (and can refuse them)."""

    def __init__(self, forward, **_):
        self.forward, self.sizes, self.refuse = forward, [], False

    async def __call__(self, inputs):
        if self.refuse:
            raise OverloadedError("the server is busy; retry shortly")
        self.sizes.append(len(inputs))
        return self.forward(inputs, True)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def engine_classifier(tiny_model_tag):
    """The tiny model on ONNX Runtime (PyTorch eager took 0.2 s a window on this busy machine)."""
    return open_classifier(tiny_model_tag, "onnxruntime")


@pytest.fixture
def pipeline(engine_classifier):
    def make(**settings) -> Pipeline:
        classifier, report = engine_classifier
        return Pipeline(classifier, Settings(**settings), report, make_batcher=Recording)

    return make


async def listen(p: Pipeline, frames: list[bytes], **options) -> list:
    async def source():
        for f in frames:
            yield f

    with p.listen(**options) as session:
        return [m async for m in session.run(source())]


def windows(messages) -> list:
    return [m for m in messages if not hasattr(m, "event")]


# --- the core, in process -----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_stream_answers_what_the_timeline_answers_for_the_same_samples(pipeline, rate):
    p = pipeline()
    samples = as_int16(af.sine(440, 12.3, rate) + af.noise(12.3, rate, 0.1))
    timeline = asyncio.run(p.timeline(af.encode(samples, rate, "WAV", "PCM_16"), hop_s=HOP, top_k=3))
    # Frames of an odd number of samples, so windows complete in the middle of frames.
    got = windows(asyncio.run(listen(p, frames_of(pcm(samples), 2 * 1531), sample_rate=rate, hop_s=HOP)))
    assert [(w.start_s, w.end_s) for w in got] == [(w.start_s, w.end_s) for w in timeline.windows]
    assert got[-1].end_s == 12.3  # the last, shorter window, as the timeline ends
    for a, b in zip(got, timeline.windows, strict=True):
        assert a.label == b.label and [s.label for s in a.top] == [s.label for s in b.top]
        np.testing.assert_allclose([s.probability for s in a.top], [s.probability for s in b.top], atol=1e-6)


def test_memory_holds_one_window_and_a_hop_and_forward_passes_stay_within_the_pending_bound(pipeline):
    p = pipeline(listen_max_pending_windows=3, listen_max_frame_kb=1024)
    rate = 8000
    samples = as_int16(af.noise(15.0, rate, 0.2))

    async def scenario():
        with p.listen(sample_rate=rate, hop_s=0.25) as session:
            async def source():
                yield pcm(samples)  # 15 s in one frame: 41 windows
            out = [m async for m in session.run(source())]
            return out, session._buffer.nbytes

    out, held = asyncio.run(scenario())
    window_s = p.classifier.settings.clip_seconds
    assert held == round((window_s + 0.25) * rate) * 4
    assert len(windows(out)) == round((15 - window_s) / 0.25) + 1
    assert max(p.batcher.sizes) == 3 and sum(p.batcher.sizes) == len(windows(out))


def test_options_are_checked_and_streams_counted_before_any_work(pipeline):
    p = pipeline(listen_max_streams=1)
    for options, said in [({}, "sample_rate"), ({"sample_rate": 7999}, "sample_rate"),
                          ({"sample_rate": 16000, "hop_s": 0.1}, "hop_s"),
                          ({"sample_rate": 16000, "smoothing": 0}, "smoothing"),
                          ({"sample_rate": 16000, "top_k": 51}, "top_k"), ({"sample_rate": 16000, "x": 1}, "x")]:
        with pytest.raises(InvalidArgumentError, match=said):
            p.listen(**options)
    with p.listen(sample_rate=16000):
        with pytest.raises(OverloadedError, match="live streams"):
            p.listen(sample_rate=16000)
    assert p.streams == 0
    with p.listen(sample_rate=16000):
        pass


def test_a_silent_client_is_closed_after_the_idle_limit(pipeline):
    p = pipeline(listen_idle_s=0.3)

    async def silent():
        with p.listen(sample_rate=16000) as session:
            async def source():
                yield pcm(np.zeros(1600))
                await asyncio.sleep(5)
                yield b""
            return [m async for m in session.run(source())]

    started = time.monotonic()
    with pytest.raises(IdleError, match="0.3 s"):
        asyncio.run(silent())
    assert time.monotonic() - started < 2


# --- the WebSocket door -------------------------------------------------------------------------


def ws_url(server, **query) -> str:
    return f"ws://127.0.0.1:{server.port}/listen?" + "&".join(f"{k}={v}" for k, v in query.items())


def ws_session(url: str, frames: list, pace_s: float = 0.0) -> tuple[list[tuple[float, dict]], int, str, list[float]]:
    """Send `frames` (then "end") at one frame per `pace_s`, read every message with its arrival time;
    returns (arrivals, close code, close reason, when each frame was sent)."""
    arrivals, sent = [], []
    with connect(url, max_size=None) as ws:
        def read():
            try:
                while True:
                    text = ws.recv(timeout=60)
                    arrivals.append((time.monotonic(), json.loads(text)))
            except ConnectionClosed:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        start = time.monotonic()
        try:
            for i, f in enumerate(frames):
                if pace_s:
                    time.sleep(max(0.0, start + i * pace_s - time.monotonic()))
                ws.send(f)
                sent.append(time.monotonic())
            ws.send("end")
        except ConnectionClosed:
            pass
        reader.join(timeout=120)
        close = ws.protocol.close_rcvd
    return arrivals, close.code if close else None, close.reason if close else None, sent


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def four_clips(synthetic_dir, http):
    """Four 5 s synthetic clips of four classes, each classified right by the served model on its own."""
    chosen, seen = [], set()
    with (synthetic_dir / "meta" / "esc50.csv").open() as f:
        for row in csv.DictReader(f):
            if row["category"] in seen:
                continue
            data = (synthetic_dir / "audio" / row["filename"]).read_bytes()
            answer = http.post("/classify", files={"audio": ("c.wav", data)}, data={"min_confidence": "0"}).json()
            if answer["label"] == row["category"]:
                chosen.append((row["category"], sf.read(io.BytesIO(data), dtype="int16")[0]))
                seen.add(row["category"])
            if len(chosen) == 4:
                break
    assert len(chosen) == 4, f"the tiny model classifies only {len(chosen)} classes' clips right"
    for _, samples in chosen:
        assert len(samples) == 5 * RATE
    return chosen


def check_clips(messages: list[dict], clips) -> None:
    got = [m for m in messages if "top" in m]
    assert [w["start_s"] for w in got] == [k * HOP for k in range(31)]  # one per hop of 20 s
    for k, (label, _) in enumerate(clips):  # the windows that lie inside one clip
        (window,) = [w for w in got if w["start_s"] == 5.0 * k]
        assert window["end_s"] == 5.0 * (k + 1) and window["label"] == label


@pytest.mark.slow
def test_websocket_at_real_speed_answers_each_hop_with_the_clips_classes(served, four_clips):
    audio = pcm(np.concatenate([s for _, s in four_clips]))
    frame = int(0.1 * RATE) * 2
    arrivals, code, _, sent = ws_session(ws_url(served, sample_rate=RATE, hop_s=HOP, min_confidence=0),
                                         frames_of(audio, frame), pace_s=0.1)
    assert code == 1000
    check_clips([m for _, m in arrivals], four_clips)
    assert sent[-1] - sent[0] >= 19.5  # it was real speed
    # Each full window came after the frame that completed it, and soon after.
    lags = []
    for t, m in arrivals:
        if "top" in m and m["end_s"] - m["start_s"] == 5.0:
            last_frame = int(round(m["end_s"] / 0.1)) - 1
            assert t >= sent[last_frame]
            lags.append(t - sent[last_frame])
    assert np.percentile(lags, 95) < 1.0, lags


@pytest.mark.slow
def test_websocket_windows_equal_the_timeline_and_events_follow_a_known_onset(served, http, four_clips):
    label, clip = four_clips[0]
    audio = np.concatenate([np.zeros(10 * RATE, np.int16), clip, clip])  # the sound starts at 10 s
    timeline = http.post("/timeline", files={"audio": ("r.wav", af.encode(audio, RATE, "WAV", "PCM_16"))},
                         data={"hop_s": HOP, "min_confidence": 0.5}).json()
    arrivals, code, _, _ = ws_session(ws_url(served, sample_rate=RATE, min_confidence=0.5, smoothing=3),
                                      frames_of(pcm(audio), 8820))
    assert code == 1000
    got = [m for _, m in arrivals if "top" in m]
    assert [(w["start_s"], w["end_s"], w["label"]) for w in got] == [
        (w["start_s"], w["end_s"], w["label"]) for w in timeline["windows"]]
    for a, b in zip(got, timeline["windows"], strict=True):
        np.testing.assert_allclose([s["probability"] for s in a["top"]], [s["probability"] for s in b["top"]],
                                   atol=1e-4)
    events = [m for _, m in arrivals if "event" in m]
    assert events[-1] == {"event": "end", "label": label, "start_s": events[-1]["start_s"], "end_s": 20.0}
    assert events[-2] == {"event": "start", "label": label, "start_s": events[-1]["start_s"]}
    assert 10.0 - HOP <= events[-1]["start_s"] <= 12.5  # within half a window after the onset
    assert all(e["label"] != "unknown" for e in events)
    for start, end in zip(events[::2], events[1::2], strict=True):  # each start closed by its end
        assert start["event"] == "start" and end["event"] == "end" and end["label"] == start["label"]


@pytest.mark.slow
@pytest.mark.parametrize("query, frames, code, said", [
    ({"sample_rate": 7000}, [], 1008, "sample_rate"),
    ({"sample_rate": 16000, "hop_s": "x"}, [], 1008, "hop_s"),
    ({"sample_rate": 16000, "smoothing": 99}, [], 1008, "smoothing"),
    ({"sample_rate": 16000, "volume": 3}, [], 1008, "volume"),
    ({"sample_rate": 16000}, [b"\x01\x02\x03"], 1003, "16-bit"),
    ({"sample_rate": 16000}, ["hello"], 1003, "binary"),
    ({"sample_rate": 16000}, [b"\0" * (Settings().listen_max_frame_kb * 1024 + 2)], 1009, ""),
])
def test_bad_parameters_and_frames_close_with_a_code_and_a_reason(served, query, frames, code, said):
    arrivals, got, reason, _ = ws_session(ws_url(served, **query), frames)
    assert got == code and said in reason
    assert all("top" not in m for _, m in arrivals)
    # The server is still serving streams.
    ok, ok_code, _, _ = ws_session(ws_url(served, sample_rate=16000), [pcm(np.zeros(16000))])
    assert ok_code == 1000


@pytest.fixture(scope="module")
def small(tiny_model_tag):
    """One worker that serves at most two streams and closes a stream after 1 s without audio."""
    from testkit.server import ServedService, free_port

    with ServedService(tiny_model_tag, grpc_port=free_port(), env={
            "SOUND_WORKERS": "1", "SOUND_LISTEN_MAX_STREAMS": "2", "SOUND_LISTEN_IDLE_S": "1"}) as server:
        yield server


@pytest.mark.slow
def test_idle_streams_are_closed_and_streams_beyond_the_limit_refused(small):
    started = time.monotonic()
    _, code, reason, _ = ws_session(ws_url(small, sample_rate=16000), [], pace_s=0)
    # ("end" was sent at once: a stream with no audio at all ends normally)
    assert code == 1000
    with connect(ws_url(small, sample_rate=16000)) as ws:
        ws.send(pcm(np.zeros(1600)))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.protocol.close_rcvd.code == 1008 and "idle" in ws.protocol.close_rcvd.reason
    assert time.monotonic() - started < 5
    with connect(ws_url(small, sample_rate=16000)) as a, connect(ws_url(small, sample_rate=16000)) as b:
        a.send(pcm(np.zeros(100)))
        b.send(pcm(np.zeros(100)))
        time.sleep(0.2)
        arrivals, code, reason, _ = ws_session(ws_url(small, sample_rate=16000), [])
        assert code == 1013 and "live streams" in reason
        assert arrivals[0][1]["error"] == "overloaded"
        channel = grpc.insecure_channel(f"127.0.0.1:{small.grpc_port}")
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.SoundClassifierStub(channel).Listen(iter([pb.ListenRequest(sample_rate=16000)])))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()


def test_overload_is_told_then_the_socket_closes_1013(pipeline):
    from starlette.testclient import TestClient

    from serving.listen import app

    p = pipeline()
    p.batcher.refuse = True
    app.state.pipeline = p
    with TestClient(app) as client, client.websocket_connect("/listen?sample_rate=16000") as ws:
        ws.send_bytes(pcm(np.zeros(16000 * 6)))
        assert ws.receive_json()["error"] == "overloaded"
        closed = ws.receive()
    assert closed == {"type": "websocket.close", "code": 1013, "reason": "overloaded: the server is busy; retry shortly"}


# --- gRPC ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        yield pb_grpc.SoundClassifierStub(channel), channel


@pytest.mark.slow
def test_grpc_listen_answers_each_hop_with_the_clips_classes(stub, four_clips):
    audio = pcm(np.concatenate([s for _, s in four_clips]))

    def requests():
        yield pb.ListenRequest(sample_rate=RATE, hop_s=HOP, min_confidence=0.0)
        for f in frames_of(audio, 4410):
            yield pb.ListenRequest(pcm=f)

    answers = list(stub[0].Listen(requests(), timeout=120))
    messages = [{"start_s": a.window.start_s, "end_s": a.window.end_s, "label": a.window.label, "top": []}
                for a in answers if a.WhichOneof("message") == "window"]
    check_clips(messages, four_clips)


@pytest.mark.slow
def test_grpc_listen_refusals_and_reflection(stub):
    for first, code in [(pb.ListenRequest(), grpc.StatusCode.INVALID_ARGUMENT),
                        (pb.ListenRequest(sample_rate=16000, pcm=b"abc"), grpc.StatusCode.INVALID_ARGUMENT),
                        (pb.ListenRequest(sample_rate=16000, pcm=b"\0" * (300 * 1024)),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)]:
        with pytest.raises(grpc.RpcError) as refused:
            list(stub[0].Listen(iter([first]), timeout=30))
        assert refused.value.code() == code
    reflection = reflection_pb2_grpc.ServerReflectionStub(stub[1])
    answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="soundclassifier.v1.SoundClassifier")])))
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in answer.file_descriptor_response.file_descriptor_proto]
    methods = {m.name: m for f in files for s in f.service for m in s.method}
    assert methods["Listen"].client_streaming and methods["Listen"].server_streaming


# --- the command-line client --------------------------------------------------------------------


@pytest.mark.slow
def test_classify_listen_streams_a_file_and_prints_windows_and_events(served, four_clips, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    label, clip = four_clips[1]
    recording = tmp_path / "clip.wav"
    recording.write_bytes(af.encode(np.concatenate([clip, clip[: RATE // 2]]), RATE, "WAV", "PCM_16"))
    run = [sys.executable, "-m", "serving.client", "--url", served.base_url, "--listen", str(recording)]
    root = Path(__file__).resolve().parents[1]
    started = time.monotonic()
    done = subprocess.run([*run, "--realtime", "--min-confidence", "0"], capture_output=True, text=True, cwd=root,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 5.5  # sent at real speed
    lines = done.stdout.splitlines()
    assert lines.pop(0) == f"{recording}: 5.50 s at {RATE} Hz"
    assert lines[0].split()[:3] == ["0.00-", "5.00", "s"] and lines[0].split()[3] == label
    assert f">> {label} from 0.00 s" in lines and f"<< {label} from 0.00 s to 5.50 s" in lines[-1]
    refused = subprocess.run([*run, "--hop-s", "0.1"], capture_output=True, text=True, cwd=root, timeout=60)
    assert refused.returncode == 1 and "hop_s" in refused.stdout and "1008" in refused.stderr


@pytest.mark.slow
def test_classify_listen_streams_standard_input_as_it_arrives(served, four_clips):
    """`--listen -`: raw PCM from a pipe, as a recorder (arecord, ffmpeg) writes it, in real time."""
    import subprocess
    import sys
    from pathlib import Path

    label, clip = four_clips[2]
    pcm_bytes = pcm(np.concatenate([clip, clip[: RATE // 2]]))
    client = subprocess.Popen([sys.executable, "-m", "serving.client", "--url", served.base_url, "--listen", "-",
                               "--rate", str(RATE), "--min-confidence", "0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False,
                              cwd=Path(__file__).resolve().parents[1])
    piece = 2 * RATE // 20 + 1  # 50 ms and an odd byte: pieces need not align with samples
    for at in range(0, len(pcm_bytes), piece):
        client.stdin.write(pcm_bytes[at : at + piece])
        client.stdin.flush()
        time.sleep(0.05)
    out, err = client.communicate(timeout=60)  # closes standard input: the recording ends
    assert client.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines.pop(0) == f"standard input: 16-bit mono PCM at {RATE} Hz"
    assert lines[0].split()[:4] == ["0.00-", "5.00", "s", label]
    assert f">> {label} from 0.00 s" in lines and f"<< {label} from 0.00 s to 5.50 s" in lines[-1]


def test_a_stream_of_tiny_frames_is_refused_once_its_frames_average_under_the_minimum(pipeline):
    """Every frame costs a hand-off to an engine thread: 2-byte frames would buy hours of a core.
    Past the first FREE_FRAMES, frames must average SOUND_LISTEN_MIN_FRAME_MS of audio."""
    from serving.errors import grpc_status, ws_close
    from soundclassifier.errors import LimitExceededError
    from soundclassifier.listen import FREE_FRAMES

    p = pipeline(listen_min_frame_ms=10.0)
    ten_ms = pcm(np.zeros(160))
    # 10 ms frames after half the free ones spent on empty frames: served to the end.
    assert asyncio.run(listen(p, [b""] * (FREE_FRAMES // 2) + [ten_ms] * 300, sample_rate=16000)) is not None
    with pytest.raises(LimitExceededError, match="10 ms of audio per message") as refused:
        asyncio.run(listen(p, [pcm(np.zeros(16))] * (FREE_FRAMES + 20), sample_rate=16000))  # 1 ms frames
    assert ws_close(refused.value)[0] == 1008
    assert grpc_status(refused.value)[0].name == "RESOURCE_EXHAUSTED"
    with pytest.raises(LimitExceededError):
        asyncio.run(listen(p, [b""] * (FREE_FRAMES + 1), sample_rate=16000))  # nothing but empty frames


def test_a_stream_ends_at_the_timeline_length_limit(pipeline):
    """A live stream is bounded like a timeline (SOUND_MAX_TIMELINE_SECONDS): past it, the stream
    is refused with a reason, after the windows it was owed; the WebSocket closes it 1008."""
    from serving.errors import ws_close

    p = pipeline(max_timeline_seconds=2.0)
    second = pcm(np.zeros(16000))
    with pytest.raises(AudioError, match="2 s of audio") as refused:
        asyncio.run(listen(p, [second, second, second[:2]], sample_rate=16000))
    assert refused.value.kind == ErrorKind.TOO_LONG
    assert ws_close(refused.value)[0] == 1008
    assert asyncio.run(listen(p, [second, second], sample_rate=16000)) is not None  # exactly at the limit
