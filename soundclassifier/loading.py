"""Serve time: open a stored model, choose the engine that serves it, compile only that one.

`open_classifier` is the one place a model is opened for serving: the service's pipeline, the
Spark executor, the benchmarks' peers all call it. `select_engine` reads the engine report stored
with the model (soundclassifier/export.py made it at save time) and compiles only the engine it
chooses: no PyTorch, no agreement check, no timing of every engine in every worker. Its measured
clips/s are cached on disk so other workers and later starts reuse them (`SpeedCache`).

An engine cache made ahead of time (`warm_engine_cache`, run by the image's build:
deploy/Dockerfile.template) spares a new container both costs of its start that do not depend on
the request: the folder named by SOUND_ENGINE_CACHE holds OpenVINO's compiled blobs (`openvino/`)
and the clips/s measured there (`engine-speed.json`), each used only when it matches (the same
graph and settings; the same model, engine, layout, CPU model and cores), else compiled or measured
as without it.

Choice: `auto` takes the first accepted engine in `preference()` order that is installed; a
`choice` (openvino, onnxruntime, torch) and a `precision` (int8, bf16, fp32) narrow the list. PyTorch
serves only when asked, or when neither OpenVINO nor ONNX Runtime can be imported (then it must be
installed: the PyTorch extra, requirements/torch.txt).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundclassifier.classifier import Classifier
from soundclassifier.config import Settings
from soundclassifier.engine import (
    ENGINES,
    REFERENCE,
    Engine,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    clips_per_second,
    cpu_model,
    machine,
)
from soundclassifier.errors import NoEngineError
from soundclassifier.hardware import default_threads
from soundclassifier.store import LoadedModel, load_model

if TYPE_CHECKING:
    import bentoml

log = logging.getLogger(__name__)

SPEED_FILE = "engine-speed.json"


def engine_cache_dir() -> Path | None:
    """The engine cache SOUND_ENGINE_CACHE names (a folder made by `warm_engine_cache`), if it exists."""
    folder = Settings().engine_cache
    return Path(folder) if folder and Path(folder).is_dir() else None


def open_classifier(
    model: str | bentoml.Model, engine: str = "auto", threads: int | None = None, streams: int | None = None,
    precision: str | None = None,
) -> tuple[Classifier, dict]:
    """Load a stored model and choose its engine: the one place every front door does it.
    Returns the classifier and the engine report (what was tried, the choice, its clips/s)."""
    loaded: LoadedModel = load_model(model)
    chosen, report = select_engine(loaded, engine, precision, threads=threads, streams=streams)
    return Classifier(loaded, chosen), report


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


def _build(model: LoadedModel, label: str, threads: int, streams: int | None,
           engine_cache: Path | None = None) -> Engine:
    name, precision = label.split("/")
    if name == "torch":
        return TorchEngine(model.network, threads, streams)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(model.onnx_path, threads, streams)
    graph = model.int8_path if precision == "int8" else model.onnx_path
    if graph is None:
        raise FileNotFoundError("the model has no INT8 graph")
    return OpenVinoEngine(graph, precision, threads, streams,
                          cache_dir=engine_cache / "openvino" if engine_cache is not None else None)


def select_engine(
    model: LoadedModel,
    choice: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    streams: int | None = None,
    speed_cache: SpeedCache | None = None,
    engine_cache: Path | None = None,
) -> tuple[Engine, dict]:
    """The engine to serve `model` with, and a report for /info and the log.

    `choice`: auto, openvino, onnxruntime or torch; `precision`: None (any), int8, bf16 or fp32.
    The engines in `preference()` order that match both are tried in turn; the first that the
    stored report accepts and that loads is compiled (only it). PyTorch comes last: it serves when
    asked, or when nothing before it is installed or acceptable. A forced choice that cannot serve
    (not installed, or refused by the report) falls back to the automatic choice with a warning.
    `threads`: the engine's threads for a wide call (default: every core); `streams`: its
    single-threaded streams for shared calls (default: as many as threads). The clips/s come from
    `speed_cache` (measured once per model, engine, layout and CPU; default `SpeedCache.default()`).
    `engine_cache`: a folder made by `warm_engine_cache` whose OpenVINO blobs the compile may load
    (default: `engine_cache_dir()`, none outside the image)."""
    threads = threads or default_threads()
    engine_cache = engine_cache or engine_cache_dir()
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
            engine = _build(model, label, threads, streams, engine_cache)
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
        engine, report = select_engine(model, "auto", None, threads, streams, speed_cache, engine_cache)
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


def cache_key(model: LoadedModel, label: str, engine: Engine) -> str:
    """What a measured speed depends on: the model, the engine, its layout, the CPU and the cores."""
    return f"{model.tag}|{label}|threads={engine.threads}|streams={engine.streams}|{cpu_model()}|cores={default_threads()}"


@dataclass(frozen=True)
class SpeedCache:
    """Measured clips/s per (model, engine, layout, CPU), in one small JSON file shared by every
    worker on the machine. A file lock makes the first worker measure while the others wait for
    its figure, so they neither measure at once (each would see half the machine) nor twice.
    `seed`: a read-only file of the same form (an engine cache's, `warm_engine_cache`), consulted
    when `path` has no figure for a key: a figure found there is neither measured nor copied."""

    path: Path
    seed: Path | None = None

    @classmethod
    def default(cls) -> SpeedCache:
        """This user's cache, seeded by the engine cache SOUND_ENGINE_CACHE names (if any)."""
        cache = engine_cache_dir()
        return cls(Path.home() / ".cache" / "soundclassifier" / SPEED_FILE,
                   seed=cache / SPEED_FILE if cache is not None else None)

    def read(self) -> dict[str, float]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _seeded(self, key: str) -> float | None:
        known = SpeedCache(self.seed).read() if self.seed is not None else {}
        return float(known[key]) if key in known else None

    def get_or_measure(self, key: str, measure: Callable[[], float]) -> float:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 - held for the block below
        except OSError as e:  # a read-only home: the seed's figure, else measure and keep nothing
            if (seeded := self._seeded(key)) is not None:
                return seeded
            log.warning("engine speed cache %s unusable (%s): measuring", self.path, e)
            return measure()
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            known = self.read()
            if key in known:
                return float(known[key])
            if (seeded := self._seeded(key)) is not None:
                return seeded
            speed = measure()
            known[key] = round(speed, 1)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
                tmp.replace(self.path)  # readers see the old file or the new one, never half of one
            except OSError as e:
                log.warning("engine speed cache %s not written (%s)", self.path, e)
            return speed


def warm_engine_cache(model: str | bentoml.Model, folder: Path, engine: str = "auto",
                      precision: str | None = None, threads: int | None = None, streams: int | None = None) -> dict:
    """Make (or add to) an engine cache in `folder`: choose and compile the engine `open_classifier`
    would with these arguments, OpenVINO's blobs written to `folder`/openvino, and measure its
    clips/s into `folder`/engine-speed.json. Starts with the same model, engine, layout, CPU model
    and cores then load the blobs and take the figure (SOUND_ENGINE_CACHE=`folder`). Returns the
    engine report."""
    folder.mkdir(parents=True, exist_ok=True)
    _, report = select_engine(load_model(model), engine, precision, threads=threads, streams=streams,
                              speed_cache=SpeedCache(folder / SPEED_FILE), engine_cache=folder)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soundclassifier.loading",
                                description="Make an engine cache for SOUND_ENGINE_CACHE (warm_engine_cache).")
    p.add_argument("folder", type=Path, help="the engine cache to make")
    p.add_argument("--model-store", type=Path,
                   help="a BentoML model store folder to open the model from (a Bento's models/; default: BENTOML_HOME's)")
    p.add_argument("--model", default=None, help="model tag (default: the service's, SOUND_MODEL_TAG)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings()  # the service's own engine, precision and layout (SOUND_* variables)
    tag = args.model or settings.model_tag
    _, threads, streams = settings.layout()
    if args.model_store is not None:
        from bentoml._internal.models import ModelStore

        model = ModelStore(str(args.model_store)).get(tag)
    else:
        model = tag
    report = warm_engine_cache(model, args.folder, settings.engine, settings.precision, threads, streams)
    print(json.dumps({k: report[k] for k in ("chosen", "clips_per_second", "threads", "streams")}), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
