"""The gRPC front door, through a real channel to the real `bentoml serve` (the `served` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from testkit import audiofiles as af

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.SoundClassifierStub(channel)


def chunks(data: bytes, size: int = 16384, **first):
    for i in range(0, len(data), size):
        yield pb.AudioChunk(data=data[i : i + size], **(first if i == 0 else {}))


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "soundclassifier.v1.SoundClassifier"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert "soundclassifier.v1.SoundClassifier" in names
    assert "grpc.health.v1.Health" in names


def test_classify_and_stream_match_http(served, stub, tiny_model_tag):
    data = af.wav_noise(seconds=2.0)
    unary = stub.Classify(pb.ClassifyRequest(audio=data, filename="a.wav", top_k=4))
    streamed = stub.ClassifyStream(chunks(data, top_k=4, filename="a.wav"))
    http = httpx.post(f"{served.base_url}/classify", files={"audio": ("a.wav", data)}, data={"top_k": "4"}, timeout=60).json()
    assert unary.model == streamed.model == http["model"] == tiny_model_tag
    for answer in (unary, streamed):
        assert [s.label for s in answer.top] == [s["label"] for s in http["top"]]
        np.testing.assert_allclose([s.probability for s in answer.top], [s["probability"] for s in http["top"]], atol=1e-5)
        assert answer.duration_s == pytest.approx(http["duration_s"])
        assert answer.sample_rate == http["sample_rate"]


def test_timeline_streams_and_matches_http(served, stub):
    data = af.encode(np.concatenate([af.sine(500, 6.0), af.noise(6.0)]))
    reply = stub.Timeline(pb.TimelineChunk(data=data[i : i + 65536], hop_s=2.5 if i == 0 else 0) for i in range(0, len(data), 65536))
    http = httpx.post(f"{served.base_url}/timeline", files={"audio": ("a.wav", data)}, data={"hop_s": "2.5"}, timeout=60).json()
    assert [(w.start_s, w.end_s) for w in reply.windows] == [(w["start_s"], w["end_s"]) for w in http["windows"]]
    assert [w.top[0].label for w in reply.windows] == [w["top"][0]["label"] for w in http["windows"]]
    assert [s.label for s in reply.summary] == [s["label"] for s in http["summary"]]


def test_info(stub, tiny_model_tag):
    info = stub.Info(pb.InfoRequest())
    assert info.model == tiny_model_tag
    assert len(info.labels) >= 2
    assert info.engine in {"openvino", "onnxruntime", "torch"}
    assert '"n_mels"' in info.feature_settings_json


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", grpc.StatusCode.INVALID_ARGUMENT),
        (b"not audio at all" * 20, grpc.StatusCode.INVALID_ARGUMENT),
        (af.nan_float_wav(), grpc.StatusCode.INVALID_ARGUMENT),
        (af.truncated_wav(), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["empty", "text", "nan", "truncated"],
)
def test_bad_audio_is_invalid_argument(stub, data, code):
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(pb.ClassifyRequest(audio=data))
    assert e.value.code() == code
    assert e.value.details()


def test_limits_map_to_their_status_codes(stub):
    # The served fixture allows 60 s and 5 MB.
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(pb.ClassifyRequest(audio=af.wav_sine(seconds=61.0, rate=8000)))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        stub.ClassifyStream(chunks(b"\0" * (6 << 20), size=1 << 20))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(pb.ClassifyRequest(audio=af.wav_sine(), top_k=500))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.Timeline(iter([pb.TimelineChunk(data=af.wav_sine(), hop_s=60)]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [("hop_s", 0.1, "0.25"), ("hop_s", 5.5, "5"), ("top_k", 51, "50"), ("min_confidence", 1.5, "1")],
)
def test_a_bad_argument_is_refused_alike_by_http_grpc_and_the_spark_command(
    served, stub, tiny_model_tag, tmp_path, field, value, bound
):
    """One rule per argument (soundclassifier/options.py): every front door refuses the same value,
    naming the argument and its bound, before any work."""
    data = af.wav_sine(seconds=6.0)
    r = httpx.post(f"{served.base_url}/timeline", files={"audio": ("a.wav", data)}, data={field: str(value)},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert field in str(r.json()["detail"]) and bound in str(r.json()["detail"])

    with pytest.raises(grpc.RpcError) as e:
        stub.Timeline(iter([pb.TimelineChunk(data=data, **{field: value})]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details() and bound in e.value.details()

    flag = "--" + field.replace("_", "-")
    spark = subprocess.run(
        [sys.executable, "-m", "batch.classify", str(tmp_path / "in"), str(tmp_path / "out"), "--timeline",
         "--model", tiny_model_tag, flag, str(value)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert spark.returncode == 2, spark.stderr  # argparse's usage error: refused before Spark starts
    assert flag in spark.stderr and bound in spark.stderr
    assert "SparkContext" not in spark.stderr


def test_64_concurrent_calls_and_still_serving(served, stub):
    data = af.wav_sine()

    async def burst():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as ch:
            s = pb_grpc.SoundClassifierStub(ch)
            return await asyncio.gather(*(s.Classify(pb.ClassifyRequest(audio=data, top_k=1)) for _ in range(64)))

    replies = asyncio.run(burst())
    assert len(replies) == 64
    assert len({r.top[0].label for r in replies}) == 1  # same clip, same answer, whatever the batch
    assert stub.Classify(pb.ClassifyRequest(audio=data)).top


CALL_CAP = 64  # SOUND_GRPC_MAX_CALLS's default, the session server's


def _call_loop(port: int, callers: int, calls: int, channel_per_caller: bool) -> Counter:
    """`callers` tasks share out `calls` Classify calls, each starting its next as soon as one
    returns (as a client keeping N calls in flight does); the outcomes: "OK" or (code, details)."""
    data = af.wav_sine(seconds=0.5)
    outcomes: Counter = Counter()

    async def run() -> None:
        # Python's channels to one address share one connection unless told otherwise.
        count = callers if channel_per_caller else 1
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(count)]
        left = [calls]

        async def caller(channel) -> None:
            stub = pb_grpc.SoundClassifierStub(channel)
            while left[0] > 0:
                left[0] -= 1
                try:
                    await stub.Classify(pb.ClassifyRequest(audio=data, top_k=1), timeout=120)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    outcomes[(e.code(), e.details())] += 1

        try:
            await asyncio.gather(*(caller(channels[i % count]) for i in range(callers)))
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(run())
    return outcomes


def _only_clean_refusals(outcomes: Counter) -> None:
    """Every call answered, or refused RESOURCE_EXHAUSTED naming the call cap: never a refused
    stream (UNAVAILABLE "Stream removed") or anything else."""
    assert sum(outcomes.values()) == 640
    others = {k: n for k, n in outcomes.items() if k != "OK" and not (
        k[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "SOUND_GRPC_MAX_CALLS" in k[1])}
    assert not others, outcomes


@pytest.mark.parametrize("channel_per_caller", [False, True], ids=["one-channel", "channel-per-caller"])
def test_callers_at_the_call_cap_get_no_errors(served, channel_per_caller):
    """Issue 32: one channel, 64 callers each starting its next call as one returns: 154-347 of
    640 failed UNAVAILABLE "Stream removed" when the connection's stream cap equalled the call cap
    (the server counts a finished stream a moment longer than the client). With a channel each the
    kernel spreads them over the workers, each within its cap."""
    assert _call_loop(served.grpc_port, CALL_CAP, 640, channel_per_caller) == Counter({"OK": 640})


@pytest.mark.parametrize("channel_per_caller", [False, True], ids=["one-channel", "channel-per-caller"])
def test_callers_beyond_the_call_cap_get_only_resource_exhausted(served, channel_per_caller):
    _only_clean_refusals(_call_loop(served.grpc_port, 3 * CALL_CAP, 640, channel_per_caller))


def test_the_call_past_the_cap_is_refused_with_a_message_and_the_cap_frees(served):
    """64 streams held open on one channel (one worker) fill its cap: the next call is refused at
    once, RESOURCE_EXHAUSTED naming the limit; once they end, calls are answered again."""
    data = af.wav_sine(seconds=0.5)

    async def run():
        release = asyncio.Event()
        # Its own connection (not one shared through grpc's subchannel pool), so every call here
        # reaches the same worker.
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}", options=options) as channel:
            s = pb_grpc.SoundClassifierStub(channel)

            async def held():  # a call in progress until released: its client stream stays open
                for piece in (data[i : i + 1024] for i in range(0, len(data), 1024)):
                    yield pb.AudioChunk(data=piece)
                    # a message every 5 s keeps it inside the idle limit (30 s) on a slow machine
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(release.wait(), 5)

            async def hold():
                call = s.ClassifyStream(held())
                await call.wait_for_connection()  # grpc starts a call's stream lazily
                return call

            holders = list(await asyncio.gather(*(hold() for _ in range(CALL_CAP))))
            refused, answered, replaced = None, 0, []
            # A probe can reach the server before the last holder's handler has started, or a call
            # of an earlier test can still hold a slot: then a holder is the one refused. It is
            # replaced and the probe tried again, so what decides is the server's count, not timing.
            while refused is None and answered < 200:
                try:
                    await s.Classify(pb.ClassifyRequest(audio=data), timeout=30)
                    answered += 1
                except grpc.aio.AioRpcError as e:
                    refused = e
                    break
                for i, h in enumerate(holders):
                    if h.done():
                        replaced.append((await h.code(), await h.details()))
                        holders[i] = await hold()
            release.set()
            answers = await asyncio.gather(*holders, return_exceptions=True)
            after = await s.Classify(pb.ClassifyRequest(audio=data), timeout=30)
            return refused, answered, replaced, answers, after

    refused, answered, replaced, answers, after = asyncio.run(run())
    assert refused is not None, f"the call cap never refused a call: {answered} probes answered, holders ended: {replaced}"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SOUND_GRPC_MAX_CALLS=64" in refused.details(), refused.details()
    assert len(replaced) < 10, f"holders kept ending before release: {replaced}"
    assert len(answers) == CALL_CAP and all(not isinstance(a, Exception) and a.top for a in answers), answers
    assert after.top


def test_committed_stubs_match_the_proto(tmp_path):
    """`make proto` output equals what is committed (stubs cannot drift from the contract)."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iserving/grpc_stubs=proto", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", "proto/soundclassifier/v1/sound_classifier.proto"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    generated = tmp_path / "serving/grpc_stubs/soundclassifier/v1"
    committed = ROOT / "serving/grpc_stubs/soundclassifier/v1"
    names = sorted(p.name for p in generated.iterdir())
    assert names == ["sound_classifier_pb2.py", "sound_classifier_pb2.pyi", "sound_classifier_pb2_grpc.py"]
    match, mismatch, errors = filecmp.cmpfiles(generated, committed, names, shallow=False)
    assert mismatch == [] and errors == []
