"""Training clips mixed with real recordings of other kinds as background (docs/training-recipe.md).

    OMP_NUM_THREADS=1 python -m experiments.background_mix --cv --no-save --outlier-dir data/other-sounds [--seed 1]

training.train's recipe, with one change: each training clip of a class is, with chance MIX_PROB
(default 0.5), mixed with a stretch of one of the `--outlier-dir` recordings its fold trains on
(never one of the held-out fold's), at a signal-to-background ratio drawn from MIX_SNR_DB (default
"5,20" dB), before the usual shift, noise and SpecAugment. Its target stays the clip's class;
the recordings are still trained on as outliers as well. Only for measuring: training.train does
not do this.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import torch

import training.train as train
from training.augment import ClipDataset
from training.datasets import OUTLIER

MIX_PROB = float(os.environ.get("MIX_PROB", "0.5"))
MIX_SNR_DB = tuple(float(v) for v in os.environ.get("MIX_SNR_DB", "5,20").split(","))


class MixedClips(ClipDataset):
    def __init__(self, waves, targets, features, augment=None, *, backgrounds=()):
        super().__init__(waves, targets, features, augment)
        self.backgrounds = [b for b in backgrounds if len(b)]

    def __getitem__(self, i):
        if (
            self.augment is None
            or not self.backgrounds
            or self.targets[i] == OUTLIER
            or torch.rand(()) >= MIX_PROB
        ):
            return super().__getitem__(i)
        wave = self.waves[i]
        bg = self.backgrounds[int(torch.randint(0, len(self.backgrounds), ()))]
        if len(bg) < len(wave):  # a short recording repeats to cover the clip
            bg = np.tile(bg, -(-len(wave) // len(bg)))
        start = int(torch.randint(0, len(bg) - len(wave) + 1, ()))
        bg = bg[start : start + len(wave)]
        lo, hi = MIX_SNR_DB
        snr = lo + (hi - lo) * float(torch.rand(()))
        power = max(float(np.mean(np.square(wave, dtype=np.float64))), 1e-10)
        bg_power = max(float(np.mean(np.square(bg, dtype=np.float64))), 1e-10)
        mixed = wave + bg * np.float32(np.sqrt(power / bg_power / 10 ** (snr / 10)))
        self.waves[i] = mixed.astype(np.float32)
        try:
            return super().__getitem__(i)
        finally:
            self.waves[i] = wave


_fit = train.fit


def fit(args, start, features, data, labels, others=None):
    backgrounds = list(others.waves) if others else []
    train.ClipDataset = functools.partial(MixedClips, backgrounds=backgrounds)
    try:
        return _fit(args, start, features, data, labels, others)
    finally:
        train.ClipDataset = ClipDataset


if __name__ == "__main__":
    print(f"background mixing: chance {MIX_PROB}, SNR {MIX_SNR_DB[0]}-{MIX_SNR_DB[1]} dB", flush=True)
    train.fit = fit
    sys.exit(train.main(sys.argv[1:]))
