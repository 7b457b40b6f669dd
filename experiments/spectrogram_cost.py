"""What a smaller spectrogram saves per clip: features and INT8 engine time for other FeatureSettings.

    python -m experiments.spectrogram_cost                        # the default against the three below
    python -m experiments.spectrogram_cost "mine:n_mels=96,hop_length=768"

For each variant (NAME:SETTING=VALUE,...; `--feature` of training.train, here comma-separated) it
times decode + resample + log-mel of the bench clip (5 s WAV at 44.1 kHz, `Classifier.prepare`'s
path) and a batch of 16 through a ResNet-14 with random weights, quantized to INT8 for OpenVINO as
`make train` quantizes, each variant in turn, round after round; medians. Random weights cost what
trained ones do, so the ratios between variants hold; the absolute engine figures are not the shipped
model's. docs/training-recipe.md ("A smaller spectrogram") records a run and the grouped CV of each.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import clip_file
from soundclassifier.audio import BlockDecoder
from soundclassifier.engine import OpenVinoEngine
from soundclassifier.export import export_onnx, quantize_int8
from soundclassifier.features import Features
from soundclassifier.network import DEFAULT_ARCH, build_network
from training.train import feature_settings

VARIANTS = [
    "default:",
    "64-bands:n_mels=64",
    "2048-fft:n_fft=2048,win_length=2048,hop_length=1024",
    "1024-hop:hop_length=1024",
]
ROUNDS = 200
BATCH = 16


def main(argv: list[str]) -> int:
    clip = clip_file()
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for text in argv or VARIANTS:
            name, _, pairs = text.partition(":")
            features = Features(feature_settings([p for p in pairs.split(",") if p]))
            shape = features.settings.input_shape
            onnx = export_onnx(build_network(DEFAULT_ARCH, 10), shape, Path(tmp) / f"{name}.onnx")
            calibration = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
            engine = OpenVinoEngine(quantize_int8(onnx, calibration, Path(tmp) / f"{name}.xml"), "int8")
            batch = np.random.default_rng(1).standard_normal((BATCH, *shape)).astype(np.float32)
            variants[name] = (features, engine, batch, {"features": [], "engine": []})
        for _ in range(ROUNDS):
            for features, engine, batch, times in variants.values():
                start = time.perf_counter()
                decoded = BlockDecoder(io.BytesIO(clip))
                features.from_blocks(decoded, decoded.sample_rate)
                middle = time.perf_counter()
                engine(batch, wide=True)
                times["features"].append(middle - start)
                times["engine"].append(time.perf_counter() - middle)
    for name, (features, _, _, times) in variants.items():
        print(f"{name:12s} input {features.settings.input_shape}: features {1e3 * statistics.median(times['features']):.2f} ms"
              f" a clip, engine {1e3 * statistics.median(times['engine']):.1f} ms a batch of {BATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
