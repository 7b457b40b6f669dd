"""Inference engines: run the network on a batch of spectrograms and return logits.

Every engine takes float32 (n, 1, n_mels, frames) and returns float32 (n, n_classes). PyTorch eager
fp32 is the reference; ONNX Runtime and OpenVINO run the ONNX export of the same weights and are
used only when they agree with the reference on the model's own sample inputs (see `agreement`).

Choice (`SOUND_ENGINE`): `auto` (default) measures every installed engine that agrees and keeps the
fastest (preferring OpenVINO, then ONNX Runtime, then PyTorch unless another is 25% faster); `openvino`, `onnxruntime` or `torch` forces one (still checked; falls back to torch with a
log line if it disagrees or is missing). Precision: fp32, plus OpenVINO bf16 where the CPU has
native bf16 (AVX512_BF16 / AMX).

Width: every engine runs a batch in one of two ways. `wide`: one call on all its threads, for a
batch that has the machine to itself (a lone request: lowest latency). Otherwise `shared`: the
batch is cut into one part per stream and each part runs single-threaded at the same time on the
engine's `workers` (see `_Streams`), so the engine can share cores with the request path and HTTP
without its threads waiting on each other whenever one is preempted. `workers` has one thread per
stream; the service runs its request path (decode, features) on the same threads, so busy
threads never outnumber the cores.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from soundclassifier.hardware import cpu_has_bf16, default_threads
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
    threads: int  # wide: one call on this many threads
    streams: int  # shared: this many single-threaded calls on parts of the batch
    workers: ThreadPoolExecutor  # one thread per stream: where shared calls run

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray: ...


class _Streams:
    """Run a batch as up to `n` parts at once, each part on a single-threaded runner.

    Single-threaded parts have no barrier to wait at, so when the feature threads take a core for
    a while only that part slows down: beside a busy feature thread, OpenVINO bf16 on 2 cores ran
    105 clips/s as one 2-thread call and 149 as two 1-thread streams (233 / 240 alone; `make bench`,
    "Sharing the cores").
    The native code releases the GIL, so the parts run in parallel from Python threads. Every part
    runs on `pool` (even a lone one), which other CPU work may share: work queued there waits its
    turn instead of taking a core from a part."""

    def __init__(self, runners: list[Callable[[np.ndarray], np.ndarray]], name: str):
        self.runners = runners
        self.pool = ThreadPoolExecutor(len(runners), thread_name_prefix=f"{name}-stream")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        parts = [p for p in np.array_split(batch, len(self.runners)) if len(p)]
        return np.concatenate(list(self.pool.map(lambda run, part: run(part), self.runners, parts)))


class TorchEngine:
    """PyTorch eager on the CPU, fp32: the reference engine."""

    name = "torch"
    precision = "fp32"

    def __init__(self, network: nn.Module, threads: int | None = None, streams: int | None = None):
        self.network = network.eval()
        self.threads = threads or default_threads()
        self.streams = streams or self.threads
        self._shared = _Streams([functools.partial(self._run, threads=1)] * self.streams, self.name)
        self.workers = self._shared.pool

    def _run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        # The setting is per calling thread (OpenMP), so it can change from call to call.
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        return self._run(batch, self.threads) if wide else self._shared(batch)


class OnnxRuntimeEngine:
    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, onnx_path: Path, threads: int | None = None, streams: int | None = None):
        import onnxruntime as ort

        self.threads = threads or default_threads()
        self.streams = streams or self.threads

        def session(n: int) -> ort.InferenceSession:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

        # A session's thread pool is fixed when it is created; a session may run several calls at once.
        self.wide = session(self.threads)
        single = session(1) if self.threads > 1 else self.wide
        self._shared = _Streams([functools.partial(self._run, single)] * self.streams, self.name)
        self.workers = self._shared.pool

    @staticmethod
    def _run(session, batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        return self._run(self.wide, batch) if wide else self._shared(batch)


class OpenVinoEngine:
    name = "openvino"

    def __init__(
        self, onnx_path: Path, precision: str = "fp32", threads: int | None = None, streams: int | None = None
    ):
        import openvino as ov

        self.precision = precision
        self.threads = threads or default_threads()
        self.streams = streams or self.threads
        core = ov.Core()
        graph = core.read_model(str(onnx_path))
        hint = "bf16" if precision == "bf16" else "f32"
        # The thread count is fixed at compile time: one model compiled for latency (one stream on
        # every thread), one for throughput (one single-threaded stream per thread). Threads are
        # not pinned to cores (OpenVINO pins by default on Linux): the engine shares the cores with
        # the request path, and a pinned thread waits for its own core while another is free
        # (A/B at 32 clients over HTTP, 6 rounds: 111.5 vs 105.5 req/s, better in 5).
        common = {"INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": False}
        self.wide = core.compile_model(
            graph, "CPU", {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", **common})
        self._wide_request = self.wide.create_infer_request()
        shared = core.compile_model(
            graph, "CPU", {"INFERENCE_NUM_THREADS": self.streams, "NUM_STREAMS": self.streams,
                           "PERFORMANCE_HINT": "THROUGHPUT", **common})
        requests = [shared.create_infer_request() for _ in range(self.streams)]
        self._shared = _Streams([functools.partial(self._run, r) for r in requests], self.name)
        self.workers = self._shared.pool

    @staticmethod
    def _run(request, batch: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(next(iter(out.values())), dtype=np.float32)

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        return self._run(self._wide_request, batch) if wide else self._shared(batch)


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


def candidates(onnx_path: Path, choice: str, threads: int, streams: int | None = None) -> list[tuple[str, callable]]:
    """(label, constructor) for every engine worth trying under `choice`, fastest kinds first."""
    found: list[tuple[str, callable]] = []
    if choice in ("auto", "openvino"):
        if cpu_has_bf16():
            found.append(("openvino/bf16", lambda: OpenVinoEngine(onnx_path, "bf16", threads, streams)))
        found.append(("openvino/fp32", lambda: OpenVinoEngine(onnx_path, "fp32", threads, streams)))
    if choice in ("auto", "onnxruntime"):
        found.append(("onnxruntime/fp32", lambda: OnnxRuntimeEngine(onnx_path, threads, streams)))
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
    streams: int | None = None,
) -> tuple[Engine, dict]:
    """The engine to serve with, and a report of what was tried (for /info and the log).
    `threads`: the engine's threads for a wide call (default: every core); `streams`: its
    single-threaded streams for shared calls (default: as many as threads)."""
    threads = threads or default_threads()
    reference_engine = TorchEngine(network, threads, streams)
    if choice == "torch" or onnx_path is None:
        speed = clips_per_second(reference_engine, samples[:16])
        reason = "requested" if choice == "torch" else "no ONNX graph"
        return reference_engine, {"chosen": "torch/fp32", "reason": reason, "clips_per_second": speed,
                                  "threads": threads}
    reference = softmax(reference_engine(samples))
    report: dict = {"tried": {}}
    agreeing: list[tuple[float, str, Engine]] = []
    for label, make in candidates(onnx_path, choice, threads, streams):
        try:
            engine = make()
        except ImportError as e:
            report["tried"][label] = f"not installed ({e.name})"
            continue
        except Exception as e:  # noqa: BLE001 - an engine that cannot compile is skipped, not fatal
            report["tried"][label] = f"failed to load: {e}"
            continue
        # Both ways of running are checked: other thread counts may split the arithmetic differently.
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
    report["threads"] = engine.threads
    log.info("engine %s (%.0f clips/s); tried %s", label, speed, report["tried"])
    return engine, report
