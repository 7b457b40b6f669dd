"""Inference engines: run the network on a batch of spectrograms and return logits.

Every engine takes float32 (n, 1, n_mels, frames) and returns float32 (n, n_classes). PyTorch eager
fp32 is the reference; ONNX Runtime and OpenVINO run the ONNX export of the same weights and are
used only when they agree with the reference on the model's own sample inputs (see `agreement`).

Choice (`SOUND_ENGINE`): `auto` (default) measures every installed engine that agrees and keeps the
fastest (preferring OpenVINO, then ONNX Runtime, then PyTorch unless another is 25% faster); `openvino`, `onnxruntime` or `torch` forces one (still checked; falls back to torch with a
log line if it disagrees or is missing). Precision: fp32, plus OpenVINO bf16 where the CPU has
native bf16 (AVX512_BF16 / AMX).

Width: every engine runs at two thread counts. `wide` (all its cores) is for a batch that has the
machine to itself, such as a lone request; `narrow` leaves `threads - narrow_threads` cores to the
request path (decoding, features, HTTP) while other requests are being prepared. A 2-thread
engine beside a busy feature thread on 2 cores has each parallel step wait for whichever of its
threads was preempted; narrowed, the two kinds of work share the cores without waiting on each
other (measured in `make bench`; see the README's performance section).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.predictions import softmax

ONNX_OPSET = 17
# Agreement with PyTorch fp32 on the model's sample inputs, per precision:
#   top-1 label equal on >= MIN_TOP1_AGREEMENT of the inputs, and every probability within TOL.
MIN_TOP1_AGREEMENT = 0.995
PROB_TOLERANCE = {"fp32": 1e-3, "bf16": 0.05}
SPEED_MARGIN = 1.25

log = logging.getLogger(__name__)


class Engine(Protocol):
    name: str
    precision: str
    threads: int  # wide
    narrow_threads: int

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray: ...


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _widths(threads: int | None, narrow_threads: int | None) -> tuple[int, int]:
    wide = threads or default_threads()
    return wide, min(wide, narrow_threads or wide)


class TorchEngine:
    """PyTorch eager on the CPU, fp32: the reference engine."""

    name = "torch"
    precision = "fp32"

    def __init__(self, network: nn.Module, threads: int | None = None, narrow_threads: int | None = None):
        self.network = network.eval()
        self.threads, self.narrow_threads = _widths(threads, narrow_threads)

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        # The setting is per calling thread (OpenMP), so it can change from call to call.
        torch.set_num_threads(self.threads if wide else self.narrow_threads)
        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


class OnnxRuntimeEngine:
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, onnx_path: Path, threads: int | None = None, narrow_threads: int | None = None):
        import onnxruntime as ort

        self.threads, self.narrow_threads = _widths(threads, narrow_threads)

        def session(n: int) -> ort.InferenceSession:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        # A session's thread pool is fixed when it is created: one session per width.
        self.sessions = {n: session(n) for n in {self.threads, self.narrow_threads}}

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        session = self.sessions[self.threads if wide else self.narrow_threads]
        return session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OpenVinoEngine:
    name = "openvino"

    def __init__(
        self, onnx_path: Path, precision: str = "fp32", threads: int | None = None, narrow_threads: int | None = None
    ):
        import openvino as ov

        self.precision = precision
        self.threads, self.narrow_threads = _widths(threads, narrow_threads)
        core = ov.Core()
        graph = core.read_model(str(onnx_path))

        def compiled(n: int):
            config = {
                "INFERENCE_NUM_THREADS": n,
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",  # one stream: batches come one at a time from the batcher
            }
            model = core.compile_model(graph, "CPU", config)
            return model, model.create_infer_request()

        # The thread count is fixed at compile time: one compiled model per width.
        self.compiled = {n: compiled(n) for n in {self.threads, self.narrow_threads}}

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        model, request = self.compiled[self.threads if wide else self.narrow_threads]
        out = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[model.output(0)], dtype=np.float32)


def export_onnx(network: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Export with a dynamic batch axis (legacy TorchScript exporter: no extra dependencies)."""
    network = network.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    torch.onnx.export(
        network,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    return path


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of inputs whose top-1 label equals the reference's
    max_prob_diff: float
    ok: bool


def agreement(engine: Engine, reference: np.ndarray, inputs: np.ndarray, wide: bool = True) -> Agreement:
    """Compare an engine's probabilities (at one width) with the reference probabilities on the same inputs."""
    probs = softmax(engine(inputs, wide=wide))
    top1 = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    diff = float(np.abs(probs - reference).max())
    ok = top1 >= MIN_TOP1_AGREEMENT and diff <= PROB_TOLERANCE[engine.precision]
    return Agreement(top1=top1, max_prob_diff=diff, ok=ok)


def candidates(onnx_path: Path, choice: str, threads: int, narrow: int) -> list[tuple[str, callable]]:
    """(label, constructor) for every engine worth trying under `choice`, fastest kinds first."""
    found: list[tuple[str, callable]] = []
    if choice in ("auto", "openvino"):
        if cpu_has_bf16():
            found.append(("openvino/bf16", lambda: OpenVinoEngine(onnx_path, "bf16", threads, narrow)))
        found.append(("openvino/fp32", lambda: OpenVinoEngine(onnx_path, "fp32", threads, narrow)))
    if choice in ("auto", "onnxruntime"):
        found.append(("onnxruntime/fp32", lambda: OnnxRuntimeEngine(onnx_path, threads, narrow)))
    return found


def clips_per_second(engine: Engine, inputs: np.ndarray, repeats: int = 3) -> float:
    engine(inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        engine(inputs)
    return repeats * len(inputs) / (time.perf_counter() - start)


def select_engine(
    network: nn.Module, onnx_path: Path | None, samples: np.ndarray, choice: str = "auto",
    threads: int | None = None,
    narrow_threads: int | None = None,
) -> tuple[Engine, dict]:
    """The engine to serve with, and a report of what was tried (for /info and the log).

    `threads` is the engine's wide width (default: every core), `narrow_threads` its width while
    the request path needs cores too (default: the same, i.e. no narrowing)."""
    threads, narrow = _widths(threads, narrow_threads)
    reference_engine = TorchEngine(network, threads, narrow)
    if choice == "torch" or onnx_path is None:
        speed = clips_per_second(reference_engine, samples[:16])
        reason = "requested" if choice == "torch" else "no ONNX graph"
        return reference_engine, {"chosen": "torch/fp32", "reason": reason, "clips_per_second": speed,
                                  "threads": {"wide": threads, "narrow": narrow}}
    reference = softmax(reference_engine(samples))
    report: dict = {"tried": {}}
    agreeing: list[tuple[float, str, Engine]] = []
    for label, make in candidates(onnx_path, choice, threads, narrow):
        try:
            engine = make()
        except ImportError as e:
            report["tried"][label] = f"not installed ({e.name})"
            continue
        except Exception as e:  # noqa: BLE001 - an engine that cannot compile is skipped, not fatal
            report["tried"][label] = f"failed to load: {e}"
            continue
        # Both widths are checked: a different thread count may split the work differently.
        check = min((agreement(engine, reference, samples, wide) for wide in (True, False)),
                    key=lambda c: (c.ok, c.top1, -c.max_prob_diff))
        if not check.ok:
            report["tried"][label] = f"disagrees (top-1 {check.top1:.3f}, max prob diff {check.max_prob_diff:.4f})"
            continue
        speed = clips_per_second(engine, samples[:16])
        report["tried"][label] = f"agrees (max prob diff {check.max_prob_diff:.5f}), {speed:.0f} clips/s"
        agreeing.append((speed, label, engine))
    if choice in ("auto", "torch") or not agreeing:
        torch_speed = clips_per_second(reference_engine, samples[:16])
        report["tried"]["torch/fp32"] = f"reference, {torch_speed:.0f} clips/s"
        agreeing.append((torch_speed, "torch/fp32", reference_engine))
        if choice not in ("auto", "torch"):
            log.warning("engine %s unavailable or disagreeing; serving on PyTorch: %s", choice, report["tried"])
    # Candidates are in order of preference (the kinds that were fastest where measured); a later
    # one must beat an earlier one by SPEED_MARGIN to be chosen, so timing noise cannot flip the
    # choice between restarts and two replicas serve from the same engine.
    best = max(s for s, _, _ in agreeing)
    speed, label, engine = next(t for t in agreeing if t[0] >= best / SPEED_MARGIN)
    report["chosen"] = label
    report["clips_per_second"] = speed
    report["threads"] = {"wide": engine.threads, "narrow": engine.narrow_threads}
    log.info("engine %s (%.0f clips/s); tried %s", label, speed, report["tried"])
    return engine, report
