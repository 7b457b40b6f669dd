"""Inference engines agree with PyTorch fp32, and serving falls back to PyTorch without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from soundclassifier.classifier import Classifier
from soundclassifier.engine import (
    MIN_TOP1_AGREEMENT,
    PROB_TOLERANCE,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    agreement,
    select_engine,
)
from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.predictions import softmax

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_inputs(loaded_model, synthetic_dir) -> np.ndarray:
    """Model inputs of every clip of the synthetic set, through the serving feature path."""
    core = Classifier(loaded_model, TorchEngine(loaded_model.network))
    return np.stack([core.prepare(p)[1] for p in sorted((synthetic_dir / "audio").glob("*.wav"))])


def engines(model) -> list:
    """Every installed engine, as the service builds them: two threads (wide), or two streams."""
    found = [TorchEngine(model.network, 2), OnnxRuntimeEngine(model.onnx_path, 2),
             OpenVinoEngine(model.onnx_path, "fp32", 2)]
    if cpu_has_bf16():
        found.append(OpenVinoEngine(model.onnx_path, "bf16", 2))
    return found


@pytest.mark.parametrize("wide", [True, False], ids=["wide", "streams"])
def test_every_installed_engine_agrees_with_pytorch(loaded_model, synthetic_inputs, wide):
    reference = softmax(TorchEngine(loaded_model.network)(synthetic_inputs))
    for engine in engines(loaded_model):
        check = agreement(engine, reference, synthetic_inputs, wide=wide)
        assert check.top1 >= MIN_TOP1_AGREEMENT, (engine.name, engine.precision, check)
        assert check.max_prob_diff <= PROB_TOLERANCE[engine.precision], (engine.name, engine.precision, check)


def test_engines_handle_any_batch_size_either_way(loaded_model, synthetic_inputs):
    for engine in engines(loaded_model):
        assert (engine.threads, engine.streams) == (2, 2)
        whole = engine(synthetic_inputs[:5])
        ones = np.concatenate([engine(synthetic_inputs[i : i + 1], wide=False) for i in range(5)])
        split = engine(synthetic_inputs[:5], wide=False)  # parts of 3 and 2 on two streams, in order
        assert whole.shape == split.shape == (5, len(loaded_model.labels))
        atol = 1e-3 if engine.precision == "fp32" else 0.1
        np.testing.assert_allclose(whole, ones, atol=atol)
        np.testing.assert_allclose(split, whole, atol=atol)


def test_streams_take_turns_with_other_work_on_the_engine_workers(loaded_model, synthetic_inputs):
    """The service prepares clips on `engine.workers`; a shared call queues behind that work
    rather than adding threads beside it, so busy threads never outnumber the workers."""
    for engine in engines(loaded_model):
        gate = threading.Event()
        blockers = [engine.workers.submit(gate.wait, 10) for _ in range(engine.streams)]
        with ThreadPoolExecutor(1) as caller:
            call = caller.submit(engine, synthetic_inputs[:4], False)
            time.sleep(0.2)
            assert not call.done(), (engine.name, engine.precision)  # waiting for a free worker
            gate.set()
            assert call.result(timeout=30).shape == (4, len(loaded_model.labels))
        assert all(b.result() for b in blockers)


def test_a_disagreeing_engine_is_refused(loaded_model, synthetic_inputs):
    class Broken:
        name, precision = "broken", "fp32"

        def __call__(self, batch, wide=True):
            return np.roll(TorchEngine(loaded_model.network)(batch), 1, axis=1)

    reference = softmax(TorchEngine(loaded_model.network)(synthetic_inputs))
    assert not agreement(Broken(), reference, synthetic_inputs).ok


def test_auto_choice_reports_what_it_tried(loaded_model):
    engine, report = select_engine(loaded_model.network, loaded_model.onnx_path, loaded_model.samples, "auto")
    assert report["chosen"] == f"{engine.name}/{engine.precision}"
    assert "torch/fp32" in report["tried"] and "onnxruntime/fp32" in report["tried"]
    assert report["threads"] == engine.threads


def test_without_openvino_and_onnxruntime_serving_falls_back_to_pytorch(tiny_model_tag, loaded_model):
    """A process where both packages are absent (their imports fail, as when uninstalled) still
    loads the model, picks PyTorch and classifies."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openvino"] = None      # import openvino -> ImportError, as if uninstalled
        sys.modules["onnxruntime"] = None
        from soundclassifier.store import load_model
        from soundclassifier.engine import select_engine
        from soundclassifier.classifier import Classifier
        from testkit import audiofiles as af
        model = load_model("{tiny_model_tag}")
        for choice in ("auto", "openvino"):
            engine, report = select_engine(model.network, model.onnx_path, model.samples, choice)
            assert engine.name == "torch", report
        print(Classifier(model, engine).classify(af.wav_sine()).top[0].label)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in loaded_model.labels
