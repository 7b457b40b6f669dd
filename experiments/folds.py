"""training.train --cv over some of the folds, to split one cross-validation across processes.

    FOLDS=2,3 OMP_NUM_THREADS=1 python -m experiments.folds --cv --no-save --outlier-dir data/other-sounds --predictions a.npz
    FOLDS=4,5 OMP_NUM_THREADS=1 python -m experiments.folds --cv --no-save --outlier-dir data/other-sounds --predictions b.npz

FOLDS (comma-separated) holds out only those folds; without it every fold is, as in training.train.
Each fold's network and predictions are the same as in a run over all folds (its split and seed do
not depend on the others); the calibration and the mean cover only the folds run.
`python -m experiments.folds --merge all.npz a.npz b.npz` joins their `--predictions`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import training.train as train


def restrict() -> list[int]:
    """Make training.train's --cv hold out only the FOLDS of the environment; returns them ([] = all)."""
    folds = [int(f) for f in os.environ.get("FOLDS", "").split(",") if f]
    if folds:
        train.held_out_folds = lambda args, ds: _known(folds, ds.folds)
    return folds


def _known(folds: list[int], have: list[int]) -> list[int]:
    if missing := sorted(set(folds) - set(have)):
        raise SystemExit(f"FOLDS names folds the data set does not have: {missing} (it has {have})")
    return [f for f in have if f in folds]


def merge(out: Path, parts: list[Path]) -> None:
    """Join the `--predictions` files of runs over different folds into one, as of a run over all."""
    runs = [np.load(p) for p in parts]
    joined = {k: runs[0][k] for k in ("labels", "open_set_kinds")}
    for k in ("logits", "targets", "folds", "open_set_logits", "outlier_dir_logits"):
        joined[k] = np.concatenate([r[k] for r in runs])
    np.savez_compressed(out, **joined)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--merge"]:
        merge(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
        sys.exit(0)
    print(f"folds {restrict() or 'all'}", flush=True)
    sys.exit(train.main(sys.argv[1:]))
