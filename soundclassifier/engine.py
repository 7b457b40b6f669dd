"""Inference engines: run the network on a batch of spectrograms and return logits.

Every engine takes float32 (n, 1, n_mels, frames) and returns float32 (n, n_classes). PyTorch eager
fp32 is the reference. OpenVINO (fp32, bf16, and an INT8 graph quantized with NNCF) and ONNX Runtime
(fp32) run graphs exported from the same weights.

Which engines may serve a model is decided once, when it is saved (`check_engines`, called by
`soundclassifier.store.save_model`): each engine and precision is compared with PyTorch fp32 on the
model's held-out inputs, and the report (top-1 agreement, largest probability difference, held-out
accuracy, accepted or why not) is stored with the model. At start-up `select_engine` reads that
report and compiles only the engine it chooses: no PyTorch, no agreement check, no timing of every
engine in every worker. Its measured clips/s are cached on disk so other workers and later starts
reuse them (`SpeedCache`).

Choice: `auto` takes the first accepted engine in `preference()` order that is installed; a
`choice` (openvino, onnxruntime, torch) and a `precision` (int8, bf16, fp32) narrow the list. PyTorch
serves only when asked, or when neither OpenVINO nor ONNX Runtime can be imported (then it must be
installed: the PyTorch extra, requirements/torch.txt).

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
import fcntl
import functools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from soundclassifier.hardware import cpu_flags, cpu_has_bf16, default_threads
from soundclassifier.predictions import softmax

if TYPE_CHECKING:  # PyTorch is imported only where a torch engine or an export needs it
    from torch import nn

    from soundclassifier.store import LoadedModel

ONNX_OPSET = 17
REFERENCE = "torch/fp32"
ENGINES = ("openvino/int8", "openvino/bf16", "openvino/fp32", "onnxruntime/fp32", REFERENCE)
"""Every engine/precision a model can be served on, as `<engine>/<precision>` labels."""

# Acceptance against PyTorch fp32 on the model's held-out inputs, checked at save time:
#   top-1 label equal on >= MIN_TOP1_AGREEMENT of the inputs, and
#   fp32/bf16: every probability within PROB_TOLERANCE;
#   int8: held-out accuracy at most MAX_ACCURACY_DROP below the reference's (where labels are known;
#   it can never drop by more than the share of inputs whose top-1 changed). Its probabilities move
#   more (0.06 on the project's ResNet-18), so their difference is reported, not a criterion.
MIN_TOP1_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.005
PROB_TOLERANCE = {"fp32": 1e-3, "bf16": 0.05}

log = logging.getLogger(__name__)


class Engine(Protocol):
    name: str
    precision: str
    threads: int  # wide: one call on this many threads
    streams: int  # shared: this many single-threaded calls on parts of the batch
    workers: ThreadPoolExecutor  # one thread per stream: where shared calls run

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray: ...


class NoEngineError(RuntimeError):
    """No inference engine can be imported in this process."""


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
    """OpenVINO on the CPU. `graph`: the ONNX file for fp32 / bf16, the quantized IR (.xml) for int8."""

    name = "openvino"

    def __init__(self, graph: Path, precision: str = "fp32", threads: int | None = None, streams: int | None = None):
        import openvino as ov

        self.precision = precision
        self.threads = threads or default_threads()
        self.streams = streams or self.threads
        core = ov.Core()
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

    @staticmethod
    def _run(request, batch: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(next(iter(out.values())), dtype=np.float32)

    def __call__(self, batch: np.ndarray, wide: bool = True) -> np.ndarray:
        return self._run(self._wide_request, batch) if wide else self._shared(batch)


# --- save time: export, quantize, check ---------------------------------------------------------


def export_onnx(network: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Export with a dynamic batch axis (legacy TorchScript exporter: no extra dependencies)."""
    import torch

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


def quantize_int8(onnx_path: Path, calibration: np.ndarray, xml_path: Path, keep_fp32: list[str] = ()) -> Path:
    """NNCF post-training INT8 quantization of the ONNX graph for OpenVINO, calibrated on
    `calibration` (n, 1, n_mels, frames) model inputs of training clips; the layers named in
    `keep_fp32` stay in floating point. Writes an IR (.xml + .bin)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    inputs = np.ascontiguousarray(calibration, dtype=np.float32)
    quantized = nncf.quantize(
        model, nncf.Dataset(list(inputs), lambda x: x[None]), subset_size=len(inputs),
        ignored_scope=nncf.IgnoredScope(names=list(keep_fp32)) if keep_fp32 else None,
    )  # fmt: skip
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)  # fp16 constants would move the answers
    return xml_path


def first_convolution(onnx_path: Path) -> str:
    """Name of the graph's first convolution (the stem, which sees the spectrogram itself)."""
    import openvino as ov

    ops = ov.Core().read_model(str(onnx_path)).get_ordered_ops()
    return next(op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution")


INT8_ATTEMPTS = ("every layer", "stem convolution in fp32")
"""INT8 graphs tried in turn until one is accepted: every layer quantized (fastest), then the stem
convolution kept in fp32: it sees the raw spectrogram, and quantizing it changed the answers on the
synthetic set (held-out top-1 agreement 0.95 -> 1.00; 523 -> 417 clips/s, bf16 305, in process)."""


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of inputs whose top-1 label equals the reference's
    max_prob_diff: float
    ok: bool


def agreement(engine: Engine, reference: np.ndarray, inputs: np.ndarray, wide: bool = True) -> Agreement:
    """An engine's probabilities (at one width) against the reference probabilities on the same
    inputs, under the fp32 / bf16 rule (top-1 and every probability within PROB_TOLERANCE)."""
    probs = softmax(engine(inputs, wide=wide))
    top1 = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    diff = float(np.abs(probs - reference).max())
    tolerance = PROB_TOLERANCE.get(engine.precision, np.inf)
    return Agreement(top1=top1, max_prob_diff=diff, ok=top1 >= MIN_TOP1_AGREEMENT and diff <= tolerance)


def check_engine(
    engine: Engine, reference: np.ndarray, inputs: np.ndarray, targets: np.ndarray | None = None
) -> dict[str, Any]:
    """One entry of the stored report: both widths checked (other thread counts may split the
    arithmetic differently; the worse one counts), accuracy where `targets` are known, the verdict."""
    checks = [agreement(engine, reference, inputs, wide) for wide in (True, False)]
    worst = min(checks, key=lambda c: (c.top1, -c.max_prob_diff))
    entry: dict[str, Any] = {"top1_agreement": worst.top1, "max_prob_diff": round(worst.max_prob_diff, 6)}
    reasons = []
    if worst.top1 < MIN_TOP1_AGREEMENT:
        reasons.append(f"top-1 agreement {worst.top1:.4f} < {MIN_TOP1_AGREEMENT}")
    if engine.precision in PROB_TOLERANCE and worst.max_prob_diff > PROB_TOLERANCE[engine.precision]:
        reasons.append(f"max probability difference {worst.max_prob_diff:.4f} > {PROB_TOLERANCE[engine.precision]}")
    if targets is not None:
        accuracy = float(np.mean(softmax(engine(inputs)).argmax(1) == targets))
        reference_accuracy = float(np.mean(reference.argmax(1) == targets))
        entry["accuracy"] = accuracy
        if engine.precision == "int8" and reference_accuracy - accuracy > MAX_ACCURACY_DROP:
            reasons.append(f"held-out accuracy {accuracy:.4f} is more than {MAX_ACCURACY_DROP} below "
                           f"fp32's {reference_accuracy:.4f}")
    entry["accepted"] = not reasons
    entry["reason"] = "; ".join(reasons) or "agrees with PyTorch fp32"
    return entry


def check_engines(
    network: nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    targets: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    scratch: Path | None = None,
    threads: int | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """The report stored with a model, and the INT8 graph it accepted (None if none).

    Every engine/precision is checked against PyTorch fp32 on held-out `inputs` (with their class
    `targets` when known). INT8 graphs are quantized from `onnx_path` with `calibration` (model
    inputs of training clips) into `scratch`, as INT8_ATTEMPTS lists, until one is accepted."""
    threads = threads or default_threads()
    reference_engine = TorchEngine(network, threads)
    reference = softmax(reference_engine(inputs))
    results: dict[str, Any] = {REFERENCE: {"top1_agreement": 1.0, "max_prob_diff": 0.0, "accepted": True,
                                           "reason": "the reference"}}
    if targets is not None:
        results[REFERENCE]["accuracy"] = float(np.mean(reference.argmax(1) == targets))
    results[REFERENCE]["clips_per_second"] = round(clips_per_second(reference_engine, inputs[:16]), 1)

    def run(make: Callable[[], Engine]) -> dict[str, Any]:
        try:
            engine = make()
        except ImportError as e:
            return {"accepted": False, "reason": f"not checked: {e.name} is not installed"}
        entry = check_engine(engine, reference, inputs, targets)
        entry["clips_per_second"] = round(clips_per_second(engine, inputs[:16]), 1)
        return entry

    for label in ("openvino/bf16", "openvino/fp32"):
        precision = label.split("/")[1]
        if precision == "bf16" and not cpu_has_bf16():
            results[label] = {"accepted": False, "reason": "not checked: this CPU has no native bf16"}
        else:
            results[label] = run(lambda p=precision: OpenVinoEngine(onnx_path, p, threads))
    results["onnxruntime/fp32"] = run(lambda: OnnxRuntimeEngine(onnx_path, threads))

    int8_path = None
    if calibration is None or len(calibration) == 0:
        results["openvino/int8"] = {"accepted": False, "reason": "not made: no calibration inputs were given"}
    else:
        attempts = []
        for n, attempt in enumerate(INT8_ATTEMPTS):
            xml = Path(scratch or tempfile.mkdtemp()) / f"int8-{n}" / "model_int8.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            try:
                keep = [first_convolution(onnx_path)] if attempt == "stem convolution in fp32" else []
                quantize_int8(onnx_path, calibration, xml, keep)
            except ImportError as e:
                attempts.append({"accepted": False, "reason": f"not made: {e.name} is not installed "
                                                              "(requirements/train.txt has it)"})  # fmt: skip
                break
            except Exception as e:  # noqa: BLE001 - reported; serving uses bf16/fp32
                log.exception("INT8 quantization failed")
                attempts.append({"accepted": False, "reason": f"not made: quantization failed: {e}"})
                break
            entry = run(lambda xml=xml: OpenVinoEngine(xml, "int8", threads))
            if entry["accepted"]:
                # A few dozen held-out clips are thin evidence for a quantized graph: its top-1 must
                # also agree on the training clips it was calibrated with (the whole synthetic set
                # showed 0.983 where 60 held-out clips showed 1.0).
                seen = check_engine(OpenVinoEngine(xml, "int8", threads), softmax(reference_engine(calibration)),
                                    calibration, None)
                entry["calibration_top1_agreement"] = seen["top1_agreement"]
                if seen["top1_agreement"] < MIN_TOP1_AGREEMENT:
                    entry["accepted"] = False
                    entry["reason"] = (f"top-1 agreement {seen['top1_agreement']:.4f} < {MIN_TOP1_AGREEMENT} on the "
                                       f"{len(calibration)} calibration clips")
            attempts.append({**entry, "quantized": attempt, "fp32_layers": keep, "calibration_inputs": len(calibration)})
            if entry["accepted"]:
                int8_path = xml
                break
        results["openvino/int8"] = {**attempts[-1], "earlier_attempts": attempts[:-1]}
    return {
        "reference": REFERENCE,
        "held_out_inputs": len(inputs),
        "labelled": targets is not None,
        "rules": {"min_top1_agreement": MIN_TOP1_AGREEMENT, "max_accuracy_drop": MAX_ACCURACY_DROP,
                  "prob_tolerance": PROB_TOLERANCE},
        "checked_on": machine(),
        "results": {label: results[label] for label in ENGINES},
    }, int8_path


# --- serve time: choose, compile one, reuse its measured speed ----------------------------------


def machine() -> dict[str, Any]:
    """What the speeds and the bf16/INT8 checks depend on."""
    flags = cpu_flags()
    return {
        "cpu": _cpu_model(),
        "bf16": cpu_has_bf16(),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "machine": platform.machine(),
    }


def preference(cpu: dict[str, Any] | None = None) -> list[str]:
    """Engine labels, fastest kind first on this CPU (the shipped ResNet-14 in process on 2 cores
    with VNNI and bf16, batch 16: INT8 2325 clips/s, bf16 1414; README, Performance). Without VNNI,
    INT8 is still ahead of fp32 but behind native bf16."""
    cpu = cpu or machine()
    order = ["openvino/int8", "openvino/bf16"] if cpu["vnni"] else ["openvino/bf16", "openvino/int8"]
    return [*order, "openvino/fp32", "onnxruntime/fp32", REFERENCE]


def accepted(model: LoadedModel, label: str) -> tuple[bool, str]:
    """Whether the stored report lets `label` serve `model`, and why (or why not)."""
    report = model.engine_report
    if report is None:
        # Saved before reports existed: the ONNX export was checked against PyTorch at save time
        # (fp32 only); nothing was checked in bf16 or INT8.
        if label.endswith("/fp32"):
            return True, "fp32 (model saved before engine reports; its ONNX export was checked)"
        return False, "not checked (model saved before engine reports)"
    entry = report["results"].get(label)
    if entry is None:
        return False, "not in the model's engine report"
    return bool(entry["accepted"]), entry["reason"]


def _build(model: LoadedModel, label: str, threads: int, streams: int | None) -> Engine:
    name, precision = label.split("/")
    if name == "torch":
        return TorchEngine(model.network, threads, streams)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(model.onnx_path, threads, streams)
    graph = model.int8_path if precision == "int8" else model.onnx_path
    if graph is None:
        raise FileNotFoundError("the model has no INT8 graph")
    return OpenVinoEngine(graph, precision, threads, streams)


def select_engine(
    model: LoadedModel,
    choice: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    streams: int | None = None,
    speed_cache: SpeedCache | None = None,
) -> tuple[Engine, dict]:
    """The engine to serve `model` with, and a report for /info and the log.

    `choice`: auto, openvino, onnxruntime or torch; `precision`: None (any), int8, bf16 or fp32.
    The engines in `preference()` order that match both are tried in turn; the first that the
    stored report accepts and that loads is compiled (only it). PyTorch comes last: it serves when
    asked, or when nothing before it is installed or acceptable. A forced choice that cannot serve
    (not installed, or refused by the report) falls back to the automatic choice with a warning.
    `threads`: the engine's threads for a wide call (default: every core); `streams`: its
    single-threaded streams for shared calls (default: as many as threads). The clips/s come from
    `speed_cache` (measured once per model, engine, layout and CPU; default `SpeedCache.default()`)."""
    threads = threads or default_threads()
    cpu = machine()
    wanted = [label for label in preference(cpu)
              if choice in ("auto", label.split("/")[0]) and precision in (None, label.split("/")[1])]  # fmt: skip
    if not wanted:
        raise ValueError(f"no engine is {choice} at precision {precision}; engines: {', '.join(ENGINES)}")
    tried: dict[str, str] = {}
    for label in wanted:
        ok, reason = accepted(model, label)
        if label.endswith("/bf16") and not cpu["bf16"]:
            ok, reason = False, "this CPU has no native bf16"
        if not ok:
            tried[label] = f"not used: {reason}"
            continue
        try:
            engine = _build(model, label, threads, streams)
        except ImportError as e:
            tried[label] = f"not installed ({e.name})"
            continue
        except Exception as e:  # noqa: BLE001 - an engine that cannot compile is skipped, not fatal
            tried[label] = f"failed to load: {e}"
            continue
        tried[label] = f"chosen: {reason}"
        cache = speed_cache or SpeedCache.default()
        speed = cache.get_or_measure(cache_key(model, label, engine),
                                     lambda engine=engine: clips_per_second(engine, model.samples[:16]))  # fmt: skip
        log.info("engine %s (%.0f clips/s); tried %s", label, speed, tried)
        return engine, {"chosen": label, "clips_per_second": speed, "threads": engine.threads,
                        "streams": engine.streams, "tried": tried}  # fmt: skip
    if choice != "auto" or precision is not None:
        log.warning("engine %s/%s cannot serve %s (%s); choosing automatically", choice, precision or "any",
                    model.tag, tried)  # fmt: skip
        engine, report = select_engine(model, "auto", None, threads, streams, speed_cache)
        report["tried"] = {**tried, **report["tried"]}
        report["forced"] = f"{choice}/{precision or 'any'} could not serve"
        return engine, report
    loaded = [v for label, v in tried.items() if label != REFERENCE and not v.startswith("not used")]
    if all(v.startswith("not installed") for v in loaded):  # (engines the report refused were never loaded)
        raise NoEngineError(
            "no inference engine is installed: install OpenVINO and ONNX Runtime (pip install -r "
            "requirements/serve.txt), or the PyTorch extra (pip install -r requirements/torch.txt)")
    raise NoEngineError(f"no engine the model's report accepts could be loaded for {model.tag}: {tried}; "
                        "the PyTorch extra (requirements/torch.txt) serves any model")


def clips_per_second(engine: Engine, inputs: np.ndarray, repeats: int = 3) -> float:
    engine(inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        engine(inputs)
    return repeats * len(inputs) / (time.perf_counter() - start)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cache_key(model: LoadedModel, label: str, engine: Engine) -> str:
    """What a measured speed depends on: the model, the engine, its layout, the CPU and the cores."""
    return f"{model.tag}|{label}|threads={engine.threads}|streams={engine.streams}|{_cpu_model()}|cores={default_threads()}"


@dataclass(frozen=True)
class SpeedCache:
    """Measured clips/s per (model, engine, layout, CPU), in one small JSON file shared by every
    worker on the machine. A file lock makes the first worker measure while the others wait for
    its figure, so they neither measure at once (each would see half the machine) nor twice."""

    path: Path

    @classmethod
    def default(cls) -> SpeedCache:
        return cls(Path.home() / ".cache" / "soundclassifier" / "engine-speed.json")

    def read(self) -> dict[str, float]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get_or_measure(self, key: str, measure: Callable[[], float]) -> float:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the block below
        except OSError as e:  # a read-only home: measure, keep nothing
            log.warning("engine speed cache %s unusable (%s): measuring", self.path, e)
            return measure()
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = self.read()
            if key in known:
                return float(known[key])
            speed = measure()
            known[key] = round(speed, 1)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
                tmp.replace(self.path)  # readers see the old file or the new one, never half of one
            except OSError as e:
                log.warning("engine speed cache %s not written (%s)", self.path, e)
            return speed
