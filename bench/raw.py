"""In-process ceilings: the network alone on each installed engine, the per-clip feature cost, and
how the served engine shares the cores with the feature step.

Both go through exactly what serving uses: `soundclassifier.store.load_model` and the engine classes
of `soundclassifier.engine` (the network), and `Classifier.prepare` (decode + resample + log-mel).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from bench.common import CLIP_RATE, CLIP_SECONDS, FORMATS, clip_file, cores
from soundclassifier.audio import decode
from soundclassifier.classifier import Classifier
from soundclassifier.engine import Engine, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from soundclassifier.export import agreement
from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.loading import accepted
from soundclassifier.predictions import softmax
from soundclassifier.store import WEIGHTS_FILE, LoadedModel

log = logging.getLogger("bench")


def engines(model: LoadedModel, threads: int | None = None) -> dict[str, Callable[[], Engine] | str]:
    """label -> constructor for every engine the serving code could pick here (or why not), in
    `soundclassifier.engine.ENGINES` order. INT8 runs the graph stored with the model (made and
    checked at save time); a model stored without one says why in its engine report."""
    found: dict[str, Callable[[], Engine] | str] = {}
    if model.int8_path is not None:
        found["openvino/int8"] = lambda: OpenVinoEngine(model.int8_path, "int8", threads)
    else:
        found["openvino/int8"] = f"skipped: no INT8 graph in the model ({stored_verdict(model, 'openvino/int8')})"
    if cpu_has_bf16():
        found["openvino/bf16"] = lambda: OpenVinoEngine(model.onnx_path, "bf16", threads)
    else:
        found["openvino/bf16"] = "skipped: the CPU has no native bf16 (avx512_bf16 / amx_bf16)"
    found["openvino/fp32"] = lambda: OpenVinoEngine(model.onnx_path, "fp32", threads)
    found["onnxruntime/fp32"] = lambda: OnnxRuntimeEngine(model.onnx_path, threads)
    why = no_pytorch(model)
    found["torch/fp32"] = f"skipped: {why}" if why else lambda: TorchEngine(model.network, threads)
    return found


def no_pytorch(model: LoadedModel) -> str | None:
    """Why the PyTorch engine cannot run `model` (asked for, a server would serve another engine), or None."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install -r requirements/torch.txt)"
    if not (model.path / WEIGHTS_FILE).exists():
        return ("the model has no PyTorch weights (the shipped model carries graphs only): train one with `make "
                "train` and run `make bench MODEL=sound-resnet:<that tag>`")
    return None


def stored_verdict(model: LoadedModel, label: str) -> str:
    """What the model's stored engine report says of `label`: accepted, or why not."""
    ok, reason = accepted(model, label)
    return f"accepted: {reason}" if ok else f"refused: {reason}"


def inputs(model: LoadedModel, n: int) -> np.ndarray:
    """n model inputs: the model's stored held-out samples, repeated as needed."""
    samples = model.samples
    reps = -(-n // len(samples))
    return np.ascontiguousarray(np.concatenate([samples] * reps)[:n], dtype=np.float32)


IDLE_BEFORE_CALL_S = 0.001
EVICT_BYTES = 64 << 20  # more than the last-level cache of any CPU this runs on


def idle() -> None:
    time.sleep(IDLE_BEFORE_CALL_S)


@functools.cache
def _evict_buffer() -> np.ndarray:
    return np.empty(EVICT_BYTES // 8)


def evict_caches() -> None:
    """Write EVICT_BYTES, so that the next call finds nothing of its own in the CPU caches: what a
    lone request meets after other work, or after the machine's other tenants ran while it idled."""
    _evict_buffer().fill(1.0)


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3, warmup: int = 2,
               before: Callable[[], None] | None = None) -> list[float]:
    """Wall time of repeated calls: at least `min_calls`, until `seconds` have passed; `before`:
    run before each call, untimed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def raw_model(model: LoadedModel, batch_sizes: list[int], seconds_per_point: float, threads: int | None = None) -> dict:
    """Throughput (clips/s) and latency per batch size for each engine, plus agreement with PyTorch (without
    PyTorch weights: with the fp32 graph, checked against them at save time). `threads`: the engines'
    threads, as the service gives them (None: one per core)."""
    ref = OnnxRuntimeEngine(model.onnx_path) if no_pytorch(model) else TorchEngine(model.network)
    reference = softmax(ref(model.samples))
    results: dict[str, dict] = {}
    for label, make in engines(model, threads).items():
        if isinstance(make, str):
            results[label] = {"skipped": make}
            log.info("  %-17s %s", label, make)
            continue
        try:
            start = time.perf_counter()
            engine = make()
            load_s = time.perf_counter() - start
        except ImportError as e:
            results[label] = {"skipped": f"not installed ({e.name})"}
            log.info("  %-17s not installed (%s)", label, e.name)
            continue
        check = agreement(engine, reference, model.samples)
        points = {}
        for b in batch_sizes:
            x = inputs(model, b)
            times = time_calls(lambda x=x, engine=engine: engine(x), seconds_per_point)
            median = statistics.median(times)
            points[b] = {
                "clips_per_s": b * len(times) / sum(times),
                "latency_ms_p50": median * 1000,
                "latency_ms_min": min(times) * 1000,
                "calls": len(times),
            }
        # Back to back, the engine's threads never sleep between calls and its weights stay in
        # the caches; a lone request meets it after the cores idled, and after decoding and
        # features (and, on a shared machine, other tenants) went through the caches. Context for
        # the latency figure (the report compares with the back-to-back one): what does a lone clip's engine
        # call itself cost?
        x = inputs(model, batch_sizes[0])
        for key, before in (("latency_ms_p50_after_idle", idle), ("latency_ms_p50_cold", evict_caches)):
            times = time_calls(lambda x=x, engine=engine: engine(x), seconds_per_point, min_calls=20, before=before)
            points[batch_sizes[0]][key] = statistics.median(times) * 1000
        best_b = max(points, key=lambda b: points[b]["clips_per_s"])
        results[label] = {
            "load_s": load_s,
            "agreement": {"top1": check.top1, "max_prob_diff": check.max_prob_diff, "ok": check.ok,
                          "reference": f"{ref.name}/{ref.precision}"},
            "stored_report": stored_verdict(model, label),
            "batches": points,
            "best": {"batch": best_b, **points[best_b]},
        }
        log.info(
            "  %-17s batch 1: %6.1f clips/s %6.1f ms | best %6.1f clips/s at batch %d | agrees %s (max diff %.4f)",
            label, points[batch_sizes[0]]["clips_per_s"], points[batch_sizes[0]]["latency_ms_p50"],
            points[best_b]["clips_per_s"], best_b, check.ok, check.max_prob_diff,
        )  # fmt: skip
    return results


def features(model: LoadedModel, repeats: int) -> dict:
    """Per-format cost of one CLIP_SECONDS clip at CLIP_RATE: decode, then resample + log-mel."""
    core = Classifier(model, OnnxRuntimeEngine(model.onnx_path))  # (its engine is not timed)
    results = {}
    for fmt in FORMATS:
        data = clip_file(fmt)
        decode_t = time_calls(lambda data=data: decode(data), 0.0, min_calls=repeats, warmup=1)
        prepare_t = time_calls(lambda data=data: core.prepare(data), 0.0, min_calls=repeats, warmup=1)
        cold_t = time_calls(lambda data=data: core.prepare(data), 0.0, min_calls=repeats, warmup=1, before=evict_caches)
        d, p = statistics.median(decode_t) * 1000, statistics.median(prepare_t) * 1000
        results[fmt] = {
            "bytes": len(data),
            "decode_ms": d,
            "features_ms": max(p - d, 0.0),
            "prepare_ms": p,
            "prepare_ms_p90": float(np.percentile(np.asarray(prepare_t) * 1000, 90)),
            "prepare_ms_cold": statistics.median(cold_t) * 1000,  # caches evicted before each call
        }
        log.info("  %-5s %7d bytes: decode %6.1f ms + resample/log-mel %6.1f ms = %6.1f ms",
                 fmt, len(data), d, results[fmt]["features_ms"], p)
    results["clip"] = {"seconds": CLIP_SECONDS, "sample_rate": CLIP_RATE, "channels": 1}
    return results


PIPELINE_BATCH = 16  # clips per engine call in process: what each of 2 workers gets at 32 clients


def pipeline_cpu(core: Classifier, data: bytes, seconds: float, batch: int = PIPELINE_BATCH) -> dict:
    """The request path without a server for `seconds`, after a warm-up batch: each upload decoded into
    features (Classifier.prepare), `batch` of them in one engine call, each answer made. `cpu_ms`: this
    process's CPU time (every thread's) per clip; `rps`: the clips/s it allows on every core."""
    opts = core.classify_options()

    def one_batch() -> int:
        prepared = [core.prepare(data) for _ in range(batch)]
        z = core.forward(np.stack([x for _, x in prepared]))
        return len([core.classification(a, row, opts) for (a, _), row in zip(prepared, z, strict=True)])

    one_batch()
    clips, cpu, start = 0, time.process_time(), time.perf_counter()
    while clips == 0 or time.perf_counter() - start < seconds:
        clips += one_batch()
    cpu_ms = 1000 * (time.process_time() - cpu) / clips
    return {"clips": clips, "batch": batch, "cpu_ms": cpu_ms, "rps": cores() * 1000 / cpu_ms,
            "clips_per_s": clips / (time.perf_counter() - start), "errors": 0}


def sharing(model: LoadedModel, engine_label: str, seconds: float, batch: int = 16,
            threads: int | None = None) -> dict:
    """How one engine shares the cores with the feature step: clips/s of the engine (batches of
    `batch`, run wide or as streams) alone, and with one thread computing features beside it
    (the served situation under load), plus the features' own clips/s in that second case."""
    make = engines(model, threads)[engine_label]
    if isinstance(make, str):
        return {"skipped": make}
    engine = make()
    core = Classifier(model, engine)
    data = clip_file("WAV")
    x = inputs(model, batch)
    results: dict = {"engine": engine_label, "batch": batch, "threads": engine.threads, "stream_count": engine.streams}
    for mode, wide in (("wide", True), ("streams", False)):
        for beside in (False, True):
            stop = threading.Event()
            prepared = [0]

            def prepare_loop(stop: threading.Event = stop, prepared: list[int] = prepared) -> None:
                while not stop.is_set():
                    core.prepare(data)
                    prepared[0] += 1

            helper = threading.Thread(target=prepare_loop, daemon=True) if beside else None
            engine(x, wide=wide)
            if helper:
                helper.start()
            start, clips = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                engine(x, wide=wide)
                clips += batch
            elapsed = time.perf_counter() - start
            stop.set()
            if helper:
                helper.join()
            key = f"{mode}_beside_features" if beside else mode
            results[key] = {"engine_clips_per_s": clips / elapsed,
                            "features_clips_per_s": prepared[0] / elapsed if beside else None}
            log.info("  %-8s %-15s engine %6.1f clips/s%s", mode, "beside features" if beside else "alone",
                     clips / elapsed, f", features {prepared[0] / elapsed:6.1f} clips/s" if beside else "")
    return results
