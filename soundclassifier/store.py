"""The hand-off between training and serving: models in the BentoML model store.

A model entry `sound-resnet:<version>` holds
    weights.safetensors   the network's state_dict (no pickle: loading executes no code)
    model.onnx            the same network as an ONNX graph (dynamic batch axis), for the engines
    samples.safetensors   a few held-out model inputs: engines must agree with PyTorch on them
    metrics.json          evaluation report on the held-out data (also summarised in metadata)
    confusion_matrix.png  the held-out confusion matrix
and metadata (JSON): architecture, labels in order, feature settings, metrics, data set name and
fingerprint, training arguments, library versions. `load_model` rebuilds everything from these.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from soundclassifier.engine import OnnxRuntimeEngine, TorchEngine, agreement, export_onnx
from soundclassifier.features import Features, FeatureSettings
from soundclassifier.network import build_network
from soundclassifier.predictions import softmax

MODEL_NAME = "sound-resnet"
DEFAULT_TAG = f"{MODEL_NAME}:latest"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILE = "model.onnx"
SAMPLES_FILE = "samples.safetensors"
METRICS_FILE = "metrics.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """Everything serving needs from one store entry."""

    tag: str
    network: nn.Module  # in eval mode
    features: Features
    labels: list[str]
    metadata: dict[str, Any]
    path: Path
    onnx_path: Path  # in the store entry, or exported to a cache for models saved without one
    samples: np.ndarray  # (n, 1, n_mels, frames) inputs for engine agreement checks


def save_model(
    network: nn.Module,
    *,
    arch: str,
    labels: list[str],
    settings: FeatureSettings,
    metadata: dict[str, Any],
    samples: np.ndarray,
    extra_files: Callable[[Path], None] | None = None,
) -> str:
    """Write a trained network into the store and return its tag.

    `bentoml.models.create` commits the entry only when its block exits without an exception, so an
    interrupted or failed save leaves nothing behind. `extra_files(dir)` may write reports beside
    the weights inside that block.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    meta = {
        "arch": arch,
        "labels": list(labels),
        "n_classes": len(labels),
        "feature_settings": settings.model_dump(),
        "input_shape": list(settings.input_shape),
        **metadata,
    }
    with bentoml.models.create(
        MODEL_NAME,
        labels={"arch": arch, "dataset": str(metadata.get("dataset", "unknown"))},
        metadata=meta,
    ) as ref:
        save_file(state, ref.path_of(WEIGHTS_FILE), metadata={"arch": arch})
        save_file({"inputs": torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))},
                  ref.path_of(SAMPLES_FILE))
        onnx_path = export_onnx(network, settings.input_shape, Path(ref.path_of(ONNX_FILE)))
        _check_export(network, onnx_path, samples)
        if extra_files is not None:
            extra_files(Path(ref.path))
        tag = str(ref.tag)
    log.info("saved %s", tag)
    return tag


def _check_export(network: nn.Module, onnx_path: Path, samples: np.ndarray) -> None:
    """The graph must give the network's answers before the entry may commit."""
    try:
        engine = OnnxRuntimeEngine(onnx_path, threads=1)
    except ImportError:  # serving without ONNX Runtime never uses the graph unchecked either
        log.warning("onnxruntime is not installed: %s saved unverified", onnx_path.name)
        return
    check = agreement(engine, softmax(TorchEngine(network)(samples)), samples)
    if not check.ok:
        raise RuntimeError(f"ONNX export disagrees with PyTorch: {check}")


def load_model(tag: str | bentoml.Model = DEFAULT_TAG) -> LoadedModel:
    """Rebuild a stored model for inference: network in eval mode, feature transform, labels."""
    model = tag if isinstance(tag, bentoml.Model) else bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    labels = list(meta["labels"])
    network = build_network(meta["arch"], len(labels))
    network.load_state_dict(load_file(model.path_of(WEIGHTS_FILE)))
    network.eval()
    settings = FeatureSettings.from_metadata(meta["feature_settings"])
    onnx_path = Path(model.path_of(ONNX_FILE))
    if not onnx_path.is_file():  # saved before ONNX export existed: export once into a cache
        cache = Path(tempfile.gettempdir()) / "sound-resnet-onnx" / str(model.tag).replace(":", "-")
        cache.mkdir(parents=True, exist_ok=True)
        onnx_path = export_onnx(network, settings.input_shape, cache / ONNX_FILE)
    samples_path = Path(model.path_of(SAMPLES_FILE))
    if samples_path.is_file():
        samples = load_file(samples_path)["inputs"].numpy()
    else:
        samples = torch.randn((16, *settings.input_shape), generator=torch.Generator().manual_seed(0)).numpy()
    return LoadedModel(
        tag=str(model.tag),
        network=network,
        features=Features(settings),
        labels=labels,
        metadata=meta,
        path=Path(model.path),
        onnx_path=onnx_path,
        samples=samples,
    )


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def has_model(tag: str = DEFAULT_TAG) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


