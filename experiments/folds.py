"""training.train --cv over some of the folds, to split one cross-validation across processes.

    FOLDS=2,3 OMP_NUM_THREADS=1 python -m experiments.folds --cv --no-save --outlier-dir data/other-sounds --predictions a.npz
    FOLDS=4,5 OMP_NUM_THREADS=1 python -m experiments.folds --cv --no-save --outlier-dir data/other-sounds --predictions b.npz

FOLDS (comma-separated) holds out only those folds; without it every fold is, as in training.train.
Each fold's network and predictions are the same as in a run over all folds (its split and seed do
not depend on the others); the calibration and the mean cover only the folds run.
`python -m experiments.distill --merge all.npz a.npz b.npz` joins the predictions.
"""

from __future__ import annotations

import os
import sys

import training.train as train


def restrict() -> list[int]:
    """Make training.train's --cv hold out only the FOLDS of the environment; returns them ([] = all)."""
    folds = [int(f) for f in os.environ.get("FOLDS", "").split(",") if f]
    if folds:
        train.held_out_folds = lambda args, ds: [f for f in ds.folds if f in folds]
    return folds


if __name__ == "__main__":
    print(f"folds {restrict() or 'all'}", flush=True)
    sys.exit(train.main(sys.argv[1:]))
