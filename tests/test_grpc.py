"""The gRPC front door, through a real channel to the real `bentoml serve` (the `served` fixture)."""

from __future__ import annotations

import asyncio
import filecmp
import subprocess
import sys
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
