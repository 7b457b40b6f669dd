"""training.train's recipe with SpecAugment of another strength (docs/training-recipe.md).

    OMP_NUM_THREADS=1 python -m experiments.specaugment_strength --cv --no-save --outlier-dir data/other-sounds [--seed 1]

One change to the recipe: the masks of `training.augment.AugmentSettings` take their count and
widest share from the environment. FREQ_MASKS / FREQ_MASK_SHARE (default 2 masks of up to 32 of
128 mel bands, twice the recipe's 16) and TIME_MASKS / TIME_MASK_SHARE (default 2 masks of up to
48 of a 5 s window's 216 frames, twice the recipe's 24). FOLDS (optional, e.g. "4,5") holds out
only those folds of --cv (experiments/folds.py). Only for measuring: training.train does not do this.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import training.train as train
from experiments import folds
from training.augment import AugmentSettings

FREQ_MASKS = int(os.environ.get("FREQ_MASKS", "2"))
FREQ_MASK_SHARE = float(os.environ.get("FREQ_MASK_SHARE", str(32 / 128)))
TIME_MASKS = int(os.environ.get("TIME_MASKS", "2"))
TIME_MASK_SHARE = float(os.environ.get("TIME_MASK_SHARE", str(48 / 216)))


@dataclasses.dataclass(frozen=True)
class Masks(AugmentSettings):
    freq_masks: int = FREQ_MASKS
    freq_mask_share: float = FREQ_MASK_SHARE
    time_masks: int = TIME_MASKS
    time_mask_share: float = TIME_MASK_SHARE


if __name__ == "__main__":
    chosen = folds.restrict()
    print(f"SpecAugment: {FREQ_MASKS} frequency masks of up to {FREQ_MASK_SHARE:.3f} of the bands, "
          f"{TIME_MASKS} time masks of up to {TIME_MASK_SHARE:.3f} of the frames; folds {chosen or 'all'}", flush=True)  # fmt: skip
    train.AugmentSettings = Masks
    sys.exit(train.main(sys.argv[1:]))
