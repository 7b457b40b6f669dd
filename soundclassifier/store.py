"""The hand-off between training and serving: models in the BentoML model store.

A model entry `sound-resnet:<version>` holds
    weights.safetensors   the network's state_dict (no pickle: loading executes no code)
    model.onnx            the same network as an ONNX graph (dynamic batch axis), for the engines
    model_int8.xml/.bin   the ONNX graph quantized to INT8 by NNCF, as an OpenVINO IR (when it could
                          be made; whether it may serve is in the engine report)
    samples.safetensors   held-out model inputs ("inputs") and, when known, their classes ("targets")
    metrics.json          evaluation report on the held-out data (also summarised in metadata)
    confusion_matrix.png  the held-out confusion matrix
and metadata (JSON): architecture, labels in order, feature settings, metrics, the engine report
(`metadata["engines"]`, see `soundclassifier.export.check_engines`), data set name and fingerprint,
training arguments, library versions.

`load_model` needs neither PyTorch nor the weights: serving reads the graphs, the report and the
settings. `LoadedModel.network` rebuilds the PyTorch network on first use only (the reference and
the PyTorch fallback; that is when torch is imported).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays

from soundclassifier.engine import ENGINES
from soundclassifier.export import check_engines, export_onnx
from soundclassifier.features import Features, FeatureSettings

if TYPE_CHECKING:
    from torch import nn

MODEL_NAME = "sound-resnet"
DEFAULT_TAG = f"{MODEL_NAME}:latest"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.xml"  # + model_int8.bin beside it
SAMPLES_FILE = "samples.safetensors"
METRICS_FILE = "metrics.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """Everything serving needs from one store entry."""

    tag: str
    features: Features
    labels: list[str]
    metadata: dict[str, Any]
    path: Path
    samples: np.ndarray  # (n, 1, n_mels, frames) held-out inputs: agreement checks, speed measurements
    sample_targets: np.ndarray | None  # (n,) their classes, for models saved with them

    @functools.cached_property
    def network(self) -> nn.Module:
        """The PyTorch network in eval mode, rebuilt from the weights on first use (imports torch)."""
        from safetensors.torch import load_file

        from soundclassifier.network import build_network

        network = build_network(self.metadata["arch"], len(self.labels))
        network.load_state_dict(load_file(self.path / WEIGHTS_FILE))
        return network.eval()

    @functools.cached_property
    def onnx_path(self) -> Path:
        """The entry's ONNX graph; models saved before ONNX export existed are exported once into a
        cache (which needs PyTorch)."""
        stored = self.path / ONNX_FILE
        if stored.is_file():
            return stored
        cache = Path(tempfile.gettempdir()) / "sound-resnet-onnx" / self.tag.replace(":", "-")
        cache.mkdir(parents=True, exist_ok=True)
        return export_onnx(self.network, self.features.settings.input_shape, cache / ONNX_FILE)

    @property
    def int8_path(self) -> Path | None:
        path = self.path / INT8_FILE
        return path if path.is_file() else None

    @property
    def engine_report(self) -> dict[str, Any] | None:
        """The engine report stored at save time (None for models saved before reports existed)."""
        return self.metadata.get("engines")


def save_model(
    network: nn.Module,
    *,
    arch: str,
    labels: list[str],
    settings: FeatureSettings,
    metadata: dict[str, Any],
    samples: np.ndarray,
    sample_targets: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> str:
    """Write a trained network into the store and return its tag.

    `samples`: held-out model inputs (with their classes `sample_targets` when known), on which
    every engine is checked against PyTorch fp32; `calibration`: model inputs of training clips
    (~100-300) for the INT8 quantization (no INT8 graph without them). The ONNX export must agree
    in fp32 or nothing is saved.

    `bentoml.models.create` commits the entry only when its block exits without an exception, so an
    interrupted or failed save leaves nothing behind. `extra_files(dir)` may write reports beside
    the weights inside that block.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    targets = None if sample_targets is None else np.asarray(sample_targets, dtype=np.int64)
    meta = {
        "arch": arch,
        "labels": list(labels),
        "n_classes": len(labels),
        "feature_settings": settings.model_dump(),
        "input_shape": list(settings.input_shape),
        **metadata,
    }
    with tempfile.TemporaryDirectory() as scratch:
        # Graphs and the report are made before the entry is opened: its metadata is written
        # when the entry is created.
        onnx_path = export_onnx(network, settings.input_shape, Path(scratch) / ONNX_FILE)
        report, int8_path = check_engines(network, onnx_path, samples, targets, calibration, Path(scratch))
        _require_fp32_agreement(report)
        meta["engines"] = report
        with bentoml.models.create(
            MODEL_NAME,
            labels={"arch": arch, "dataset": str(metadata.get("dataset", "unknown"))},
            metadata=meta,
        ) as ref:
            save_file(state, ref.path_of(WEIGHTS_FILE), metadata={"arch": arch})
            arrays = {"inputs": samples} | ({} if targets is None else {"targets": targets})
            save_arrays(arrays, ref.path_of(SAMPLES_FILE))
            shutil.copyfile(onnx_path, ref.path_of(ONNX_FILE))
            if int8_path is not None:
                shutil.copyfile(int8_path, ref.path_of(INT8_FILE))
                shutil.copyfile(int8_path.with_suffix(".bin"), ref.path_of(Path(INT8_FILE).with_suffix(".bin").name))
            if extra_files is not None:
                extra_files(Path(ref.path))
            tag = str(ref.tag)
    log.info("saved %s; engines: %s", tag, summary(report))
    return tag


def _require_fp32_agreement(report: dict) -> None:
    """The fp32 graph must give the network's answers before the entry may commit."""
    for label in ("onnxruntime/fp32", "openvino/fp32"):
        entry = report["results"][label]
        if not entry["accepted"] and not entry["reason"].startswith("not checked"):
            raise RuntimeError(f"ONNX export disagrees with PyTorch on {label}: {entry['reason']}")


def summary(report: dict) -> str:
    """One part per engine the report covers, for logs and the training output."""
    parts = []
    for label in ENGINES:
        e = report["results"].get(label)
        if e is None:
            continue
        figures = ", ".join(f"{k} {e[k]:.4g}" for k in ("top1_agreement", "max_prob_diff", "accuracy",
                                                          "clips_per_second") if k in e)  # fmt: skip
        said = "; ".join(x for x in (figures, e.get("reason")) if x)
        parts.append(f"{label}: {'accepted' if e.get('accepted') else 'refused'} ({said})")
    return "; ".join(parts)


def load_model(tag: str | bentoml.Model = DEFAULT_TAG) -> LoadedModel:
    """Open a stored model for inference: labels, feature transform, graphs, engine report and
    held-out inputs. Reads no weights and imports no PyTorch (see `LoadedModel.network`)."""
    model = tag if isinstance(tag, bentoml.Model) else bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    settings = FeatureSettings.from_metadata(meta["feature_settings"])
    samples_path = Path(model.path_of(SAMPLES_FILE))
    stored = load_arrays(str(samples_path)) if samples_path.is_file() else {}
    samples = stored.get("inputs")
    if samples is None:  # saved before samples were kept: random inputs still time the engine
        samples = np.random.default_rng(0).standard_normal((16, *settings.input_shape)).astype(np.float32)
    return LoadedModel(
        tag=str(model.tag),
        features=Features(settings),
        labels=list(meta["labels"]),
        metadata=meta,
        path=Path(model.path),
        samples=samples,
        sample_targets=stored.get("targets"),
    )


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def has_model(tag: str = DEFAULT_TAG) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
