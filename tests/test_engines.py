"""Inference engines: what the store decided at save time holds, serving compiles only what it
chose, never imports PyTorch when OpenVINO serves, and falls back (or refuses) clearly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from soundclassifier.audio import decode
from soundclassifier.engine import ENGINES, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from soundclassifier.export import INT8_ATTEMPTS, MIN_TOP1_AGREEMENT, PROB_TOLERANCE, agreement, check_engine
from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.loading import SpeedCache, preference, select_engine
from soundclassifier.predictions import softmax
from soundclassifier.store import summary

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_inputs(loaded_model, synthetic_dir) -> np.ndarray:
    """Model inputs of every clip of the synthetic set (training and held-out folds)."""
    return np.stack([loaded_model.features(decode(p)) for p in sorted((synthetic_dir / "audio").glob("*.wav"))])


@pytest.fixture(scope="module")
def reference(loaded_model, synthetic_inputs) -> np.ndarray:
    return softmax(TorchEngine(loaded_model.network)(synthetic_inputs))


@pytest.fixture
def speed_cache(tmp_path) -> SpeedCache:
    return SpeedCache(tmp_path / "engine-speed.json")


def engines(model) -> list:
    """Every engine the model may be served on, as the service builds them: two threads (wide), or two streams."""
    found = [TorchEngine(model.network, 2), OnnxRuntimeEngine(model.onnx_path, 2),
             OpenVinoEngine(model.onnx_path, "fp32", 2)]
    if model.int8_path is not None:  # accepted at save time (test_int8_... checks the verdict either way)
        found.append(OpenVinoEngine(model.int8_path, "int8", 2))
    if cpu_has_bf16():
        found.append(OpenVinoEngine(model.onnx_path, "bf16", 2))
    return found


# --- the decision stored at save time -----------------------------------------------------------


def test_the_stored_report_covers_every_engine(loaded_model):
    report = loaded_model.engine_report
    assert set(report["results"]) == set(ENGINES)
    assert report["reference"] == "torch/fp32" and report["labelled"] is True
    assert report["held_out_inputs"] == len(loaded_model.samples) == len(loaded_model.sample_targets) == 20
    for label, entry in report["results"].items():
        assert isinstance(entry["accepted"], bool) and entry["reason"], label
    for label in ("openvino/fp32", "onnxruntime/fp32", "torch/fp32"):
        assert report["results"][label]["accepted"], report["results"][label]
    json.dumps(report)  # stored as JSON metadata


def test_int8_was_made_with_nncf_and_accepted_on_the_synthetic_model(loaded_model):
    """The tiny model's INT8 graph: every layer quantized changed a held-out answer (top-1 0.95),
    so the store kept the stem convolution in fp32, which agrees; the verdict and both attempts
    are in the report."""
    int8 = loaded_model.engine_report["results"]["openvino/int8"]
    if not int8["accepted"]:  # every attempt refused, each saying why; nothing stored to serve
        assert loaded_model.int8_path is None and "top-1 agreement" in int8["reason"], int8
        assert int8["quantized"] == INT8_ATTEMPTS[-1] and len(int8["earlier_attempts"]) == len(INT8_ATTEMPTS) - 1
        return
    assert loaded_model.int8_path is not None and loaded_model.int8_path.with_suffix(".bin").is_file()
    assert int8["calibration_inputs"] == 40  # every training clip of the tiny set
    assert int8["quantized"] in INT8_ATTEMPTS and len(int8["earlier_attempts"]) == INT8_ATTEMPTS.index(int8["quantized"])
    assert int8["top1_agreement"] >= MIN_TOP1_AGREEMENT
    for attempt in int8["earlier_attempts"]:
        assert not attempt["accepted"] and "top-1 agreement" in attempt["reason"]


def test_the_stored_figures_are_what_the_engines_give(loaded_model):
    """Recomputed now on the stored held-out inputs: the same agreement and accuracy."""
    model = loaded_model
    reference = softmax(TorchEngine(model.network, 2)(model.samples))
    for engine in engines(model):
        stored = model.engine_report["results"][f"{engine.name}/{engine.precision}"]
        fresh = check_engine(engine, reference, model.samples, model.sample_targets)
        assert fresh["top1_agreement"] == stored["top1_agreement"], (engine.name, engine.precision)
        assert fresh["accuracy"] == stored["accuracy"], (engine.name, engine.precision)
        assert fresh["max_prob_diff"] == pytest.approx(stored["max_prob_diff"], abs=1e-3)
        assert fresh["accepted"] == stored["accepted"]


@pytest.mark.parametrize("wide", [True, False], ids=["wide", "streams"])
def test_every_accepted_engine_agrees_on_the_whole_synthetic_set(loaded_model, synthetic_inputs, reference, wide):
    """All 60 clips (the 20 held out at save time and the 40 trained on), both ways of running."""
    for engine in engines(loaded_model):
        check = agreement(engine, reference, synthetic_inputs, wide=wide)
        assert check.top1 >= MIN_TOP1_AGREEMENT, (engine.name, engine.precision, check)
        if engine.precision in PROB_TOLERANCE:
            assert check.max_prob_diff <= PROB_TOLERANCE[engine.precision], (engine.name, engine.precision, check)
        else:  # int8: probabilities move more; reported, bounded loosely
            assert check.max_prob_diff <= 0.3, check


def test_the_acceptance_rules():
    """check_engine on engines that change a known share of answers (the real reference's logits,
    altered): one changed answer in 20 refuses any precision; INT8 may move probabilities far
    more than bf16 as long as every top-1 stays."""
    logits = np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32) * 3
    reference = softmax(logits)
    targets = reference.argmax(1)

    class Altered:
        name = "altered"

        def __init__(self, precision, flip=0, blur=0.0):
            self.precision, self.flip, self.blur = precision, flip, blur

        def __call__(self, batch, wide=True):
            out = logits[: len(batch)] * (1 - self.blur)
            for i in range(self.flip):
                out[i] = np.roll(out[i], 1)
            return out

    flipped = check_engine(Altered("int8", flip=1), reference, logits, targets)
    assert not flipped["accepted"] and "top-1 agreement 0.9500" in flipped["reason"]
    assert flipped["accuracy"] == 0.95 and "accuracy" in flipped["reason"]  # 5 points lost too
    blurred = check_engine(Altered("int8", blur=0.4), reference, logits, targets)
    assert blurred["accepted"] and blurred["max_prob_diff"] > PROB_TOLERANCE["bf16"]
    assert not check_engine(Altered("bf16", blur=0.4), reference, logits, targets)["accepted"]
    assert check_engine(Altered("fp32"), reference, logits, None) == {
        "top1_agreement": 1.0, "max_prob_diff": 0.0, "accepted": True, "reason": "agrees with PyTorch fp32"}


def test_the_report_summary_says_only_what_the_report_holds():
    """The training output's engine line: an engine never measured says why, with no empty figures."""
    line = summary({"results": {
        "openvino/int8": {"accepted": True, "top1_agreement": 1.0, "reason": "agrees with PyTorch fp32"},
        "openvino/bf16": {"accepted": False, "reason": "not checked: this CPU has no native bf16"},
    }})  # fmt: skip
    assert line == ("openvino/int8: accepted (top1_agreement 1; agrees with PyTorch fp32); "
                    "openvino/bf16: refused (not checked: this CPU has no native bf16)")  # fmt: skip


# --- serve time: choose once, compile one -------------------------------------------------------


def test_auto_serves_the_first_accepted_engine_in_preference_order(loaded_model, speed_cache):
    engine, report = select_engine(loaded_model, "auto", speed_cache=speed_cache)
    expected = next(label for label in preference()
                    if loaded_model.engine_report["results"][label]["accepted"]
                    and (cpu_has_bf16() or not label.endswith("bf16")))  # fmt: skip
    assert report["chosen"] == expected == f"{engine.name}/{engine.precision}"
    assert report["tried"][expected].startswith("chosen")
    assert list(report["tried"]) == preference()[: preference().index(expected) + 1]  # nothing after it built
    assert report["clips_per_second"] > 0 and report["threads"] == engine.threads
    assert engine(loaded_model.samples[:3]).shape == (3, len(loaded_model.labels))


@pytest.mark.parametrize(("choice", "precision", "expected"), [
    ("openvino", "fp32", "openvino/fp32"), ("onnxruntime", None, "onnxruntime/fp32"),
    ("torch", None, "torch/fp32"), ("openvino", "int8", "openvino/int8"), (None, "fp32", "openvino/fp32"),
])  # fmt: skip
def test_forced_choices(loaded_model, speed_cache, choice, precision, expected):
    engine, report = select_engine(loaded_model, choice or "auto", precision, speed_cache=speed_cache)
    if expected == "openvino/int8" and loaded_model.int8_path is None:  # refused at save time: not served
        assert report["chosen"] != expected and "forced" in report, report
        return
    assert report["chosen"] == expected == f"{engine.name}/{engine.precision}"
    assert "forced" not in report


def test_a_forced_engine_the_report_refuses_is_not_served(loaded_model, speed_cache):
    results = json.loads(json.dumps(loaded_model.engine_report["results"]))
    results["onnxruntime/fp32"] |= {"accepted": False, "reason": "top-1 agreement 0.9000 < 0.995"}
    refused = dataclasses.replace(loaded_model, metadata={
        **loaded_model.metadata, "engines": {**loaded_model.engine_report, "results": results}})  # fmt: skip
    engine, report = select_engine(refused, "onnxruntime", speed_cache=speed_cache)
    assert engine.name != "onnxruntime"
    assert report["tried"]["onnxruntime/fp32"] == "not used: top-1 agreement 0.9000 < 0.995"
    assert report["forced"] == "onnxruntime/any could not serve"


def test_models_saved_before_engine_reports_serve_fp32_only(loaded_model, speed_cache):
    legacy = dataclasses.replace(loaded_model, metadata={k: v for k, v in loaded_model.metadata.items()
                                                         if k != "engines"})  # fmt: skip
    assert legacy.engine_report is None
    engine, report = select_engine(legacy, "auto", speed_cache=speed_cache)
    assert report["chosen"] == "openvino/fp32"
    assert report["tried"]["openvino/int8"].startswith("not used: not checked")


def test_speed_is_measured_once_and_reused(loaded_model, speed_cache):
    _, first = select_engine(loaded_model, "onnxruntime", speed_cache=speed_cache)
    stored = json.loads(speed_cache.path.read_text())
    assert [first["clips_per_second"]] == pytest.approx(list(stored.values()), abs=0.05)
    (key,) = stored
    assert loaded_model.tag in key and "onnxruntime/fp32" in key and "threads=" in key
    # Another worker / a second start: the stored figure, not a new measurement.
    assert SpeedCache(speed_cache.path).get_or_measure(key, lambda: pytest.fail("measured again")) == stored[key]
    _, second = select_engine(loaded_model, "onnxruntime", speed_cache=SpeedCache(speed_cache.path))
    assert second["clips_per_second"] == stored[key]


def test_an_engine_cache_serves_a_start_without_compiling_or_measuring(tiny_model_tag, loaded_model, tmp_path,
                                                                       monkeypatch):
    """What the image does (deploy/Dockerfile.template): `warm_engine_cache` at build time, then
    every start with SOUND_ENGINE_CACHE takes the stored speed instead of measuring it, loads
    OpenVINO's compiled blob, writes nothing there, and answers as an uncached engine does."""
    import shutil

    from soundclassifier.loading import SPEED_FILE, warm_engine_cache

    inputs = loaded_model.samples[:4]
    uncached, _ = select_engine(loaded_model, "openvino", "fp32", threads=1,
                                speed_cache=SpeedCache(tmp_path / "uncached.json"))
    made = warm_engine_cache(tiny_model_tag, tmp_path / "made", "openvino", "fp32", threads=1)
    assert made["chosen"] == "openvino/fp32"
    assert any((tmp_path / "made" / "openvino").iterdir()), "no compiled blob was written"
    stored = json.loads((tmp_path / "made" / SPEED_FILE).read_text())
    cache = tmp_path / "image-cache"
    shutil.copytree(tmp_path / "made", cache)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    monkeypatch.setenv("SOUND_ENGINE_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # this user's own speed cache starts empty

    def never(*_):
        raise AssertionError("measured the engine's speed although the engine cache holds it")

    monkeypatch.setattr("soundclassifier.loading.clips_per_second", never)
    engine, report = select_engine(loaded_model, "openvino", "fp32", threads=1)
    assert report["clips_per_second"] == list(stored.values())[0]
    np.testing.assert_allclose(engine(inputs), uncached(inputs), atol=1e-5)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before  # read, never written


def test_workers_starting_together_measure_once(tmp_path):
    """Two processes ask the shared cache for the same figure at once: one measures (while the
    other waits for it), both get its value."""
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from soundclassifier.loading import SpeedCache
        def measure():
            with open({str(tmp_path / "measured")!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            return 123.4
        print(SpeedCache(Path({str(tmp_path / "speed.json")!r})).get_or_measure("model|engine", measure))
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=60)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert outputs == ["123.4", "123.4"]
    assert len((tmp_path / "measured").read_text().split()) == 1


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


# --- processes as deployed ----------------------------------------------------------------------


def run_python(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -c script` from the project root, with the test store and its own speed cache."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})  # fmt: skip


def test_serving_on_openvino_never_loads_pytorch(tiny_model_tag, tmp_path):
    """Load the stored model, choose and build the engine, features and a batch: no torch module,
    no libtorch mapped, and no other engine compiled (ONNX Runtime not even imported)."""
    done = run_python(f"""
        import sys
        import numpy as np
        from soundclassifier.audio import decode
        from soundclassifier.loading import select_engine
        from soundclassifier.store import load_model
        from testkit import audiofiles as af
        model = load_model("{tiny_model_tag}")
        engine, report = select_engine(model, "auto")
        x = np.stack([model.features(decode(af.wav_sine(freq=f, seconds=3.0))) for f in (300.0, 2000.0)])
        assert engine(x).shape == (2, len(model.labels)) and engine(x, wide=False).shape == (2, len(model.labels))
        maps = open("/proc/self/maps").read()
        loaded = sorted(m for m in ("torch", "torchaudio", "torchvision", "fastai", "onnxruntime") if m in sys.modules)
        print(report["chosen"], loaded, "libtorch" in maps)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    chosen, rest = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert chosen.startswith("openvino/")
    assert rest == "[] False"


def test_without_openvino_and_onnxruntime_serving_falls_back_to_pytorch(tiny_model_tag, loaded_model, tmp_path):
    """A process where both packages are absent (their imports fail, as when uninstalled) still
    loads the model, picks PyTorch and classifies."""
    done = run_python(f"""
        import sys
        sys.modules["openvino"] = None      # import openvino -> ImportError, as if uninstalled
        sys.modules["onnxruntime"] = None
        from soundclassifier.audio import decode
        from soundclassifier.loading import select_engine
        from soundclassifier.store import load_model
        from testkit import audiofiles as af
        model = load_model("{tiny_model_tag}")
        for choice in ("auto", "openvino"):
            engine, report = select_engine(model, choice)
            assert engine.name == "torch", report
        probs = engine(model.features(decode(af.wav_sine()))[None])[0]
        print(model.labels[int(probs.argmax())])
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in loaded_model.labels


def test_without_any_engine_the_error_names_what_to_install(tiny_model_tag, tmp_path):
    done = run_python(f"""
        import sys
        for name in ("openvino", "onnxruntime", "torch"):
            sys.modules[name] = None
        from soundclassifier.errors import NoEngineError
        from soundclassifier.loading import select_engine
        from soundclassifier.store import load_model
        try:
            select_engine(load_model("{tiny_model_tag}"), "auto")
        except NoEngineError as e:
            print(e)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "requirements/serve.txt" in done.stdout and "requirements/torch.txt" in done.stdout


def test_a_warmed_engine_needs_no_more_memory_for_any_batch_it_is_handed(loaded_model):
    """OpenVINO compiles kernels and sizes buffers for an input shape the first time it meets it
    (about 60 MiB a process for the batches a server makes). `warm` meets every batch shape a
    server can hand the engine, so serving any of them later takes no more memory; a fresh engine
    handed the same batches grows (the check can see the difference)."""
    import psutil

    graph, precision = (loaded_model.int8_path, "int8") if loaded_model.int8_path else (loaded_model.onnx_path, "fp32")
    max_batch, process = 16, psutil.Process()
    one = loaded_model.samples[:1]

    def growth_mib(engine) -> float:
        before = process.memory_full_info().uss
        for n in np.random.default_rng(0).permutation(np.arange(1, max_batch + 1)):
            for wide in (True, False):
                engine(np.repeat(one, n, axis=0), wide=wide)
        return (process.memory_full_info().uss - before) / 2**20

    warmed = OpenVinoEngine(graph, precision, threads=2, streams=2)
    assert warmed.warm(one, max_batch) == max_batch + max_batch // 2
    after_warm = growth_mib(warmed)
    fresh = growth_mib(OpenVinoEngine(graph, precision, threads=2, streams=2))
    assert fresh >= 16 and after_warm <= fresh / 4, (after_warm, fresh)
