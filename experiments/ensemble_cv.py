"""Seed ensembles from saved cross-validation predictions, without training.

    OMP_NUM_THREADS=1 python -m training.train --cv --no-save --predictions a.npz [--seed 0]
    OMP_NUM_THREADS=1 python -m training.train --cv --no-save --predictions b.npz --seed 1
    python -m experiments.ensemble_cv a.npz b.npz      # one file: that run alone

The held-out logits of each run are averaged clip by clip. For each fold, temperature and threshold
are fitted on the other folds' pooled held-out logits (the stored rule, training.calibrate), then
the fold is judged: accuracy, in-set accuracy with "unknown" counted wrong, and the share of the
generated out-of-set sounds answered "unknown". Prints the means over the folds to stdout;
docs/training-recipe.md ("Two seeds, averaged") records them.
The generated sounds are the same whatever the seed since 15612a9 (training.outofset.CHECK_SEED);
the --predictions of earlier runs of another seed than 0 were judged on other clips: run them again.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.refit_check import judge
from training.calibrate import calibrate


def main(paths: list[str]) -> int:
    runs = [np.load(p) for p in paths]
    y, folds = runs[0]["targets"], runs[0]["folds"]
    for r in runs[1:]:
        assert (r["targets"] == y).all() and (r["folds"] == folds).all(), "the runs are of other data or order"
    z = np.mean([r["logits"] for r in runs], axis=0)
    oos = np.mean([r["open_set_logits"] for r in runs], axis=0)  # (folds, clips, classes)
    rows = []
    for i, t in enumerate(sorted(set(folds))):
        mine = folds == t
        cal = calibrate(z[~mine], y[~mine], "other folds")
        rows.append(judge(z[mine], y[mine], oos[i], cal))
        print(f"fold {t}: accuracy {rows[-1][0]:.4f} in-set with unknown {rows[-1][1]:.4f} out-of-set unknown {rows[-1][2]:.3f}")
    m = np.mean(rows, axis=0)
    print(f"mean: accuracy {m[0]:.4f} in-set with unknown {m[1]:.3f} out-of-set unknown {m[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
