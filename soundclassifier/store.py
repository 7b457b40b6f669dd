"""The hand-off between training and serving: models in the BentoML model store.

A model entry `sound-resnet:<version>` holds
    weights.safetensors   the network's state_dict (no pickle: loading executes no code)
    metrics.json          evaluation report on the held-out data (also summarised in metadata)
    confusion_matrix.png  the held-out confusion matrix
and metadata (JSON): architecture, labels in order, feature settings, metrics, data set name and
fingerprint, training arguments, library versions. `load_model` rebuilds everything from these.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
from safetensors.torch import load_file, save_file
from torch import nn

from soundclassifier.features import Features, FeatureSettings
from soundclassifier.network import build_network

MODEL_NAME = "sound-resnet"
DEFAULT_TAG = f"{MODEL_NAME}:latest"
WEIGHTS_FILE = "weights.safetensors"
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


def save_model(
    network: nn.Module,
    *,
    arch: str,
    labels: list[str],
    settings: FeatureSettings,
    metadata: dict[str, Any],
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
        if extra_files is not None:
            extra_files(Path(ref.path))
        tag = str(ref.tag)
    log.info("saved %s", tag)
    return tag


def load_model(tag: str | bentoml.Model = DEFAULT_TAG) -> LoadedModel:
    """Rebuild a stored model for inference: network in eval mode, feature transform, labels."""
    model = tag if isinstance(tag, bentoml.Model) else bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    labels = list(meta["labels"])
    network = build_network(meta["arch"], len(labels))
    network.load_state_dict(load_file(model.path_of(WEIGHTS_FILE)))
    network.eval()
    settings = FeatureSettings.model_validate(meta["feature_settings"])
    return LoadedModel(
        tag=str(model.tag),
        network=network,
        features=Features(settings),
        labels=labels,
        metadata=meta,
        path=Path(model.path),
    )


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def has_model(tag: str = DEFAULT_TAG) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


