"""Which score should decide "unknown": the top probability or the familiarity, on saved predictions.

    python -m experiments.unknown_rules a.npz b.npz ...

Each file is the `--predictions` of a `python -m training.train --cv --outlier-dir ...` run: every
fold's held-out logits from the network trained without it, the held-out `--outlier-dir`
recordings' logits and the generated out-of-set sounds'. For each run it fits the temperature on
all held-out logits (as `calibrate` does) and, for each score, the stored rule's threshold (keep
`KEEP_CORRECT` of the right answers), then prints: in-set accuracy with "unknown" counted wrong (the
same for both scores by construction), how often the held-out recordings and the generated sounds
are "unknown", the share of wrong in-set answers turned "unknown", and how often an answered label
is right. No training; docs/training-recipe.md ("The rule for unknown") records a run.
"""

from __future__ import annotations

import sys

import numpy as np

from soundclassifier.predictions import familiarity, softmax
from training.calibrate import KEEP_CORRECT, choose_threshold, fit_temperature

SCORES = {
    "probability": lambda z: softmax(z).max(axis=-1),
    "familiarity": familiarity,
}


def judge(path: str) -> dict[str, dict[str, float]]:
    d = np.load(path)
    z, y = d["logits"], d["targets"]
    t = fit_temperature(z, y)
    correct = z.argmax(axis=1) == y
    outside = {"recordings": d["outlier_dir_logits"], "generated": d["open_set_logits"].reshape(-1, z.shape[1])}
    rows = {}
    for name, score in SCORES.items():
        s = score(z / t)
        threshold = choose_threshold(s, correct, KEEP_CORRECT)
        answered = s >= threshold
        rows[name] = {
            "accuracy": float(correct.mean()),
            "in_set_with_unknown": float((correct & answered).mean()),
            **{f"{k}_unknown": float((score(v / t) < threshold).mean()) for k, v in outside.items()},
            "wrong_turned_unknown": float((~answered)[~correct].mean()) if (~correct).any() else float("nan"),
            "answered_right": float(correct[answered].mean()),
        }
    return rows


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    for path in paths:
        for name, row in judge(path).items():
            print(f"{path} {name:11s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
