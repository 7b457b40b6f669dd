"""Export a stored model as the project's shipped default: what serving needs, in BentoML's format.

    python -m training.ship                                  # sound-resnet:latest -> bentos/sound-resnet.bentomodel
    python -m training.ship sound-resnet:<version> --out bentos/sound-resnet.bentomodel

`make serve` imports the archive into an empty store (`bentoml models import`), so a new machine
answers without training and without PyTorch. The archive is the store entry minus what only
training and the PyTorch fallback read: no `weights.safetensors` (SOUND_ENGINE=torch needs a model
from `make train`), and only the first `SHIPPED_SAMPLES` held-out inputs (serving times its engine on
16). The graphs (INT8 IR, ONNX), metadata, calibration, metrics and confusion matrix stay as trained.
tests/test_shipped_model.py checks the archive against the code and data it claims to come from.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import bentoml
from bentoml._internal.models.model import Model
from safetensors.numpy import load_file, save_file

from soundclassifier.store import DEFAULT_TAG, SAMPLES_FILE, WEIGHTS_FILE

SHIPPED = Path(__file__).resolve().parent.parent / "bentos" / "sound-resnet.bentomodel"
SHIPPED_SAMPLES = 16  # soundclassifier.loading.select_engine times the engine on samples[:16]

log = logging.getLogger("training.ship")


def ship(tag: str = DEFAULT_TAG, out: Path = SHIPPED) -> Path:
    """Write the trimmed archive of store entry `tag` to `out` (replaced if present)."""
    model = bentoml.models.get(tag)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model"
        shutil.copytree(model.path, copy)
        (copy / WEIGHTS_FILE).unlink(missing_ok=True)
        samples = load_file(str(copy / SAMPLES_FILE))
        save_file({k: v[:SHIPPED_SAMPLES].copy() for k, v in samples.items()}, str(copy / SAMPLES_FILE))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        Model.from_path(copy).export(str(out))
    log.info("shipped %s as %s (%.1f MB)", model.tag, out, out.stat().st_size / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tag", nargs="?", default=DEFAULT_TAG, help="store entry to ship (default %(default)s)")
    p.add_argument("--out", type=Path, default=SHIPPED, help="archive to write (default bentos/sound-resnet.bentomodel)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ship(args.tag, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
