"""Does shipping a network trained on every fold, with the calibration of one trained on fewer, pay?
And would averaging seeds pay more than that refit?

    python -m training.train --cv --no-save --predictions cv.npz [recipe flags]     # the "B" networks
    python -m experiments.refit_check cv.npz [the same recipe flags]                # trains the "A"s
    python -m training.train --cv --no-save --predictions cv1.npz --seed 1 [flags]  # more seeds, then
    python -m experiments.refit_check cv.npz cv1.npz [the same recipe flags]        # an "A" per seed

One fold down from what `make train` does: for each fold t as the test, network A trains on every
fold but t and the one after it (c), is calibrated on c (temperature and threshold, as training
stores them) and judged on t; B, the cross-validation network trained on every fold but t, is A's
refit. Both are judged on t with A's calibration: accuracy, in-set accuracy with "unknown" counted
wrong, and the share of out-of-set sounds answered "unknown".

With one prediction file per seed (the first of seed --seed, the next of --seed + 1, ...), an A is
trained for each seed, and three ensembles (logits averaged) are judged beside them: the As,
calibrated on c as one model (what training the seeds instead of the refit would ship, at the same
cost for two seeds); the Bs at that calibration; and each seed's A with its own B at A's calibration
(serving the measured network beside its refit). Prints a table per fold and the means to stdout;
docs/training-recipe.md ("Refit", "Seeds or refit, one fold down") records them with commit and command.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from soundclassifier.features import Features, FeatureSettings
from training import train
from training.augment import ClipDataset
from training.calibrate import accuracy_with_unknown, calibrate, unknown_mask
from training.datasets import Decoded, choose_clip_seconds, decode_clips, load_dataset
from training.evaluate import predict_logits
from training.transfer import start_from


def judge(z: np.ndarray, y: np.ndarray, oos: np.ndarray, cal: dict) -> tuple:
    return float((z.argmax(1) == y).mean()), accuracy_with_unknown(z, y, cal), float(unknown_mask(oos, cal).mean())


def main(argv: list[str]) -> int:
    n_runs = next((i for i, a in enumerate(argv) if not a.endswith(".npz")), len(argv))
    cvs = [np.load(p) for p in argv[:n_runs]]
    args = train.parse_args(argv[n_runs:])
    ds = load_dataset(args.dataset, args.data_dir, seed=args.seed, group_pattern=args.group_pattern)
    base = FeatureSettings()
    data = decode_clips(ds.clips, ds.labels, Features(base))
    window = args.clip_seconds or choose_clip_seconds([len(w) / base.sample_rate for w in data.waves])
    features = Features(base.model_copy(update={"clip_seconds": window}))  # as the --cv run chose it
    start = start_from(None, ds.labels, args.arch)
    rows: dict[str, list[tuple]] = {}
    for i, t in enumerate(ds.folds):
        c = ds.folds[(i + 1) % len(ds.folds)]
        part = {"train": Decoded(), "c": Decoded(), "t": Decoded()}
        for w, y, clip in zip(data.waves, data.targets, data.clips, strict=True):
            p = part["c" if clip.fold == c else "t" if clip.fold == t else "train"]
            p.waves.append(w)
            p.targets.append(y)
            p.clips.append(clip)
        yc, y = np.array(part["c"].targets), np.array(part["t"].targets)
        a_c, a_t, nets, b_t, b_oos = [], [], [], [], []
        for k, cv in enumerate(cvs):
            mine = cv["folds"] == t
            assert (cv["targets"][mine] == y).all(), "the --cv predictions are of another data set or order"
            net = train.fit(argparse.Namespace(**{**vars(args), "seed": args.seed + k}), start, features, part["train"], ds.labels)
            a_c.append(predict_logits(net, ClipDataset(part["c"].waves, part["c"].targets, features, None)))
            a_t.append(predict_logits(net, ClipDataset(part["t"].waves, part["t"].targets, features, None)))
            nets.append(net)
            b_t.append(cv["logits"][mine])
            b_oos.append(cv["open_set_logits"][i])
        a_oos = list(train.open_set_logits(nets, features, ds.labels)[1])  # one set of clips for every A
        judged = {}
        for k in range(len(cvs)):
            cal = calibrate(a_c[k], yc, "")
            name = f" (seed {args.seed + k})" if len(cvs) > 1 else ""
            judged["A" + name] = judge(a_t[k], y, a_oos[k], cal)
            judged["B (refit, borrowed calibration)" + name] = judge(b_t[k], y, b_oos[k], cal)
            if len(cvs) > 1:
                judged["A+B, A's calibration" + name] = judge((a_t[k] + b_t[k]) / 2, y, (a_oos[k] + b_oos[k]) / 2, cal)
        if len(cvs) > 1:
            cal = calibrate(np.mean(a_c, axis=0), yc, "")
            judged[f"{len(cvs)} As, calibrated as one"] = judge(np.mean(a_t, axis=0), y, np.mean(a_oos, axis=0), cal)
            judged[f"{len(cvs)} Bs, the As' calibration"] = judge(np.mean(b_t, axis=0), y, np.mean(b_oos, axis=0), cal)
        print(f"test fold {t} (calibrated on {c}): accuracy / in-set with unknown / out-of-set unknown")
        for name, r in judged.items():
            rows.setdefault(name, []).append(r)
            print(f"  {name}: {r[0]:.4f} {r[1]:.4f} {r[2]:.3f}", flush=True)
    print(f"mean over {len(ds.folds)} test folds:")
    for name, r in rows.items():
        m = np.mean(r, axis=0)
        print(f"  {name}: {m[0]:.4f} {m[1]:.4f} {m[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
