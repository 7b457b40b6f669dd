"""Does shipping a network trained on every fold, with the calibration of one trained on fewer, pay?

    python -m training.train --cv --no-save --predictions cv.npz [recipe flags]     # the "B" networks
    python -m training.refit_check cv.npz [the same recipe flags]                   # trains the "A"s

One fold down from what `make train` does: for each fold t as the test, network A trains on every
fold but t and the one after it (c), is calibrated on c (temperature and threshold, as training
stores them) and judged on t; B, the cross-validation network trained on every fold but t, is A's
refit. Both are judged on t with A's calibration: accuracy, in-set accuracy with "unknown" counted
wrong, and the share of out-of-set sounds answered "unknown". docs/training-recipe.md has the figures.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.special import softmax

from soundclassifier.features import Features, FeatureSettings
from training import train
from training.augment import ClipDataset
from training.calibrate import accuracy_with_unknown, calibrate, unknown_mask
from training.datasets import Decoded, choose_clip_seconds, decode_clips, load_dataset
from training.evaluate import predict_logits
from training.transfer import start_from


def judge(z: np.ndarray, y: np.ndarray, oos: np.ndarray, temperature: float, threshold: float) -> tuple:
    p = softmax(z / temperature, axis=1)
    return float((z.argmax(1) == y).mean()), accuracy_with_unknown(p, y, threshold), float(unknown_mask(oos, temperature, threshold).mean())


def main(argv: list[str]) -> int:
    cv = np.load(argv[0])
    args = train.parse_args(argv[1:])
    ds = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    base = FeatureSettings()
    data = decode_clips(ds.clips, ds.labels, Features(base))
    window = args.clip_seconds or choose_clip_seconds([len(w) / base.sample_rate for w in data.waves])
    features = Features(base.model_copy(update={"clip_seconds": window}))  # as the --cv run chose it
    start = start_from(None, ds.labels, args.arch)
    rows = []
    for i, t in enumerate(ds.folds):
        c = ds.folds[(i + 1) % len(ds.folds)]
        part = {"train": Decoded(), "c": Decoded(), "t": Decoded()}
        for w, y, clip in zip(data.waves, data.targets, data.clips, strict=True):
            p = part["c" if clip.fold == c else "t" if clip.fold == t else "train"]
            p.waves.append(w)
            p.targets.append(y)
            p.clips.append(clip)
        net = train.fit(args, start, features, part["train"], ds.labels)
        z = {k: predict_logits(net, ClipDataset(part[k].waves, part[k].targets, features, None)) for k in ("c", "t")}
        cal = calibrate(z["c"], np.array(part["c"].targets), "", groups=np.arange(len(part["c"].targets)) % 2)
        _, oos_a = train.open_set_logits([net], features, ds.labels, args.seed)
        y = np.array(part["t"].targets)
        mine = cv["folds"] == t
        assert (cv["targets"][mine] == y).all(), "the --cv predictions are of another data set or order"
        a = judge(z["t"], y, oos_a[0], cal["temperature"], cal["threshold"])
        b = judge(cv["logits"][mine], y, cv["open_set_logits"][i], cal["temperature"], cal["threshold"])
        rows.append(a + b)
        print(f"test fold {t} (calibrated on {c}): A accuracy {a[0]:.4f} in-set with unknown {a[1]:.4f} "
              f"out-of-set unknown {a[2]:.3f} | B {b[0]:.4f} {b[1]:.4f} {b[2]:.3f}", flush=True)
    m = np.mean(rows, axis=0)
    print(f"mean: A {m[0]:.4f} {m[1]:.4f} {m[2]:.3f} | B (refit, borrowed calibration) {m[3]:.4f} {m[4]:.4f} {m[5]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
