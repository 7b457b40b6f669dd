"""Inference engines: run the network on a batch of spectrograms and return logits.

Every engine takes float32 (n, 1, n_mels, frames) and returns float32 (n, n_classes). PyTorch eager
fp32 is the reference. OpenVINO (fp32, bf16, and an INT8 graph quantized with NNCF) and ONNX Runtime
(fp32) run graphs exported from the same weights. Which of them may serve a model is decided when it
is saved (soundclassifier/export.py); which one does, when it is opened (soundclassifier/loading.py).

Width: every engine runs a batch in one of two ways. `wide`: one call on all its threads, for a
batch that has the machine to itself (a lone request: lowest latency). Otherwise `shared`: the
batch is cut into one part per stream and each part runs single-threaded at the same time on the
engine's `workers` (see `_Streams`), so the engine can share cores with the request path and HTTP
without its threads waiting on each other whenever one is preempted. `workers` has one thread per
stream; the service runs its request path (decode, features) on the same threads, so busy
threads never outnumber the cores.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from soundclassifier.hardware import cpu_flags, cpu_has_bf16, default_threads

if TYPE_CHECKING:  # PyTorch is imported only where a torch engine or an export needs it
    from torch import nn


REFERENCE = "torch/fp32"
ENGINES = ("openvino/int8", "openvino/bf16", "openvino/fp32", "onnxruntime/fp32", REFERENCE)
"""Every engine/precision a model can be served on, as `<engine>/<precision>` labels."""


log = logging.getLogger(__name__)


class Engine(Protocol):
    name: str
    precision: str
    threads: int  # wide: one call on this many threads
    streams: int  # shared: this many single-threaded calls on parts of the batch
    workers: ThreadPoolExecutor  # one thread per stream: where shared calls run

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray: ...

    def warm(self, sample: np.ndarray, max_batch: int) -> int:
        """Prepare every batch shape up to `max_batch` clips that a server can hand the engine;
        returns the calls it made."""
        ...


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
    """PyTorch eager on the CPU, fp32: the reference engine (needs the PyTorch extra)."""

    name = "torch"
    precision = "fp32"

    def __init__(self, network: nn.Module, threads: int | None = None, streams: int | None = None):
        import torch

        self._torch = torch
        self.network = network.eval()
        self.threads = threads or default_threads()
        self.streams = streams or self.threads
        self._shared = _Streams([functools.partial(self._run, threads=1)] * self.streams, self.name)
        self.workers = self._shared.pool

    def _run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        torch = self._torch
        # The setting is per calling thread (OpenMP), so it can change from call to call.
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        return self._run(batch, self.threads) if wide else self._shared(batch)

    def warm(self, sample: np.ndarray, max_batch: int) -> int:
        return 0  # nothing is compiled or sized per input shape ahead of the first call


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

    def warm(self, sample: np.ndarray, max_batch: int) -> int:
        return 0  # nothing is compiled or sized per input shape ahead of the first call


class OpenVinoEngine:
    """OpenVINO on the CPU. `graph`: the ONNX file for fp32 / bf16, the quantized IR (.xml) for int8.

    `cache_dir`: OpenVINO's compiled-model cache (CACHE_DIR): a compile whose graph, settings and
    OpenVINO version match a blob there loads the blob instead of compiling (docs/container.md, Cold
    start, has the time it saves); a miss compiles as without it. A read-only folder is read and
    never written (the image's, made at build time: deploy/Dockerfile.template)."""

    name = "openvino"

    def __init__(self, graph: Path, precision: str = "fp32", threads: int | None = None, streams: int | None = None,
                 cache_dir: Path | None = None):
        import openvino as ov

        self.precision = precision
        self.threads = threads or default_threads()
        self.streams = streams or self.threads
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        model = core.read_model(str(graph))
        # int8: the layers NNCF left unquantized run in f32, as they did when the INT8 graph's
        # agreement with PyTorch was checked at save time (the model's engine report).
        hint = "bf16" if precision == "bf16" else "f32"
        # The thread count is fixed at compile time: one model compiled for latency (one stream on
        # every thread), one for throughput (one single-threaded stream per thread). Threads are
        # not pinned to cores (OpenVINO pins by default on Linux): the engine shares the cores with
        # the request path, and a pinned thread waits for its own core while another is free
        # (A/B at 32 clients over HTTP, 6 rounds: 111.5 vs 105.5 req/s, better in 5).
        common = {"INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": False}
        self.wide = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", **common})
        self._wide_request = self.wide.create_infer_request()
        shared = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": self.streams, "NUM_STREAMS": self.streams,
                           "PERFORMANCE_HINT": "THROUGHPUT", **common})
        requests = [shared.create_infer_request() for _ in range(self.streams)]
        self._shared = _Streams([functools.partial(self._run, r) for r in requests], self.name)
        self.workers = self._shared.pool
        self._lock = threading.Lock()  # an infer request runs one call at a time: `warm` runs beside serving

    @staticmethod
    def _run(request, batch: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(next(iter(out.values())), dtype=np.float32)

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        with self._lock:
            return self._run(self._wide_request, batch) if wide else self._shared(batch)

    def warm(self, sample: np.ndarray, max_batch: int) -> int:
        """Run once every batch shape a server can hand this engine: wide batches of 1..`max_batch`
        clips, and shared batches whose parts are 1..ceil(`max_batch` / streams) clips.

        OpenVINO compiles kernels and sizes its buffers for an input shape the first time it meets
        it: 20-30 ms and 1.5-4 MiB a shape, about 60 MiB a process for batches up to 16
        (docs/performance.md, "The memory a worker needs"). Met under load, that is a stall in the
        first seconds of traffic and memory that grows with whatever traffic comes first; met
        here, it is part of the size a worker starts at. Safe beside serving calls: each call
        holds the engine's lock, so a request waits for at most one of these."""
        one = np.ascontiguousarray(sample[:1], dtype=np.float32)
        shapes = [(n, True) for n in range(1, max_batch + 1)]
        shapes += [(part * self.streams, False) for part in range(1, -(-max_batch // self.streams) + 1)]
        for n, wide in shapes:
            self(np.repeat(one, n, axis=0), wide=wide)
        return len(shapes)


# --- what both the save-time checks and the serve-time choice measure -----------------------------


def machine() -> dict[str, Any]:
    """What the speeds and the bf16/INT8 checks depend on."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "bf16": cpu_has_bf16(),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "machine": platform.machine(),
    }


def clips_per_second(engine: Engine, inputs: np.ndarray, repeats: int = 3) -> float:
    engine(inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        engine(inputs)
    return repeats * len(inputs) / (time.perf_counter() - start)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


