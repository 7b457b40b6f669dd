"""Real sounds of none of the classes: each ESC-10 class held out of training in turn.

    OMP_NUM_THREADS=1 python -m experiments.class_holdout [--classes dog,rain] [recipe flags]

The generated out-of-set sounds (training.outofset) are synthetic. This measures what the issue's
"other environmental sounds" ask, on real recordings: for each class c, the recipe trains on the
other nine classes' clips of folds 3-5 and is measured and calibrated on their fold-2 clips, as the
default model is (the stored threshold rule); then all 32 clips of c, a sound it has never heard,
are classified: the share answered "unknown" at the threshold. With --refit, the network trained
again on every fold of the nine classes answers them too, at the measured network's calibration:
what the default model ships. With --ensemble, a second network of the next seed trains on the
same folds, and the two (logits averaged) are calibrated on fold 2 and judged as one model. With
--outlier-classes K, the K classes after c (in label order, wrapping round) are left out of training
too, so each run trains on 9 - K classes; with --real-outliers, their clips are what a user's
--outlier-dir would be: recordings of none of the classes for outlier exposure (folds 3-5 trained
on, fold 2 measured as unheard recordings of heard kinds). c itself stays a kind never heard. One
line per class, then the means, to stdout; docs/training-recipe.md ("Real sounds of none of the
classes") records them. The recipe flags are training.train's (--seed, --arch, --refit, ...).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace

import numpy as np

from soundclassifier.features import Features, FeatureSettings
from training.augment import ClipDataset
from training.calibrate import accuracy_with_unknown, calibrate, unknown_mask
from training.datasets import (
    OUTLIER_LABEL,
    SHIPPED_ESC10,
    Dataset,
    choose_clip_seconds,
    decode_clips,
    load_dataset,
)
from training.evaluate import predict_logits
from training.train import evaluate, fit, parse_args
from training.transfer import start_from


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--classes", default="", help="comma-separated classes to hold out (default: every class)")
    p.add_argument("--ensemble", action="store_true", help="also judge the mean of two seeds' networks")
    p.add_argument("--outlier-classes", type=int, default=0, help="also leave out the K classes after the held-out one")
    p.add_argument("--real-outliers", action="store_true", help="train on those K classes' clips as recordings of none of the classes")
    own, rest = p.parse_known_args(argv)
    args = parse_args(["--no-save", *rest])
    full = load_dataset("esc10", SHIPPED_ESC10)
    classes = own.classes.split(",") if own.classes else full.labels
    rows = []
    for held in classes:
        i = full.labels.index(held)
        left_out = [full.labels[(i + k) % len(full.labels)] for k in range(own.outlier_classes + 1)]
        labels = [lab for lab in full.labels if lab not in left_out]
        ds = Dataset("esc10-without-" + held, full.root, [c for c in full.clips if c.label in labels], labels)
        base = FeatureSettings()
        data = decode_clips(ds.clips, labels, Features(base))
        seconds = args.clip_seconds or choose_clip_seconds([len(w) / base.sample_rate for w in data.waves])
        features = Features(base.model_copy(update={"clip_seconds": seconds}))
        left_out_clips = decode_clips([replace(c, label=OUTLIER_LABEL) for c in full.clips if c.label in left_out[1:]], labels, features)
        others = left_out_clips if own.real_outliers else None
        ev = evaluate(args, start_from(None, labels, args.arch), features, ds, data, others)
        cal = calibrate(ev.logits, ev.targets, "held-out fold")
        unseen = decode_clips([c for c in full.clips if c.label == held], [held], features)
        unseen_ds = ClipDataset(unseen.waves, unseen.targets, features, None)
        z = predict_logits(ev.networks[0], unseen_ds)  # the measured network's answers to the unseen class
        top = z.argmax(1)
        row = {
            "held_out_class": held,
            "accuracy": float((ev.logits.argmax(1) == ev.targets).mean()),
            "in_set_with_unknown": accuracy_with_unknown(ev.logits, ev.targets, cal),
            "unknown_rate": float(unknown_mask(z, cal).mean()),
            "threshold": cal.get("familiarity_threshold"),
            "taken_for": max(set(top), key=list(top).count),
            "outlier_classes": left_out[1:],
        }
        if own.outlier_classes:  # their fold-2 clips: unheard recordings of the kinds --real-outliers shows
            _, unheard = left_out_clips.split(ds, ev.folds[0])
            z_unheard = predict_logits(ev.networks[0], ClipDataset(unheard.waves, unheard.targets, features, None))
            row["unknown_rate_outlier_classes_fold2"] = float(unknown_mask(z_unheard, cal).mean())
        row["taken_for"] = labels[row["taken_for"]]
        if args.refit:
            refit = fit(args, start_from(None, labels, args.arch), features, data, labels, others)
            row["unknown_rate_refit"] = float(unknown_mask(predict_logits(refit, unseen_ds), cal).mean())
        if own.ensemble:
            other = copy.copy(args)
            other.seed = args.seed + 1
            ev2 = evaluate(other, start_from(None, labels, args.arch), features, ds, data, others)
            zv = (ev.logits + ev2.logits) / 2
            cal2 = calibrate(zv, ev.targets, "held-out fold")
            zu = (z + predict_logits(ev2.networks[0], unseen_ds)) / 2
            row["accuracy_ensemble"] = float((zv.argmax(1) == ev.targets).mean())
            row["in_set_with_unknown_ensemble"] = accuracy_with_unknown(zv, ev.targets, cal2)
            row["unknown_rate_ensemble"] = float(unknown_mask(zu, cal2).mean())
        rows.append(row)
        print("HOLDOUT", row, flush=True)
    print_means("HOLDOUT", rows)
    return 0


def print_means(tag: str, rows: list[dict]) -> None:
    """The mean, min and max over the runs of every rate in `rows` (the threshold aside), one line each."""
    for key in rows[0]:
        if not isinstance(rows[0][key], float) or key == "threshold":
            continue
        v = np.array([r[key] for r in rows])
        print(f"{tag} mean {key}: {v.mean():.4f} (min {v.min():.4f}, max {v.max():.4f})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
