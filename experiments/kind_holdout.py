"""Kinds of sound the outlier recordings do not hold: each kind of data/other-sounds held out in turn.

    OMP_NUM_THREADS=1 python -m experiments.kind_holdout [--kinds speech,music] [recipe flags]

`make train` passes data/other-sounds as `--outlier-dir`: recordings of none of the classes, of eight
kinds (the folders under audio/: animals, household, machines, music, nature, room-tone, speech,
vehicles). Its own report says how often "unknown" answers unheard recordings of those kinds (the
held-out fold's share). A deployment also hears kinds the folder does not hold. For each kind k this
trains the default recipe's measured network (folds 3-5 of the shipped ESC-10 clips, measured and
calibrated on fold 2, as `make train` does) with every other kind as the outlier recordings, then
classifies every recording of k, a kind it never heard: the share answered "unknown" by the stored
rule (familiarity), and, from the same network, by the rule of models stored before it (the top
probability, keeping the same share of right answers). Each line also gives the fold-2 accuracy,
the in-set accuracy with "unknown" counted wrong, and the "unknown" rate on the held-out fold's
recordings of the kinds it did hear. One line
per kind, then the means, to stdout; docs/training-recipe.md records them. The recipe flags are
training.train's (--seed, --outliers, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.class_holdout import print_means
from soundclassifier.features import Features, FeatureSettings
from soundclassifier.predictions import softmax
from training.augment import ClipDataset
from training.calibrate import accuracy_with_unknown, calibrate, choose_threshold, unknown_mask
from training.datasets import SHIPPED_ESC10, choose_clip_seconds, decode_clips, load_dataset, outliers
from training.evaluate import predict_logits
from training.train import evaluate, parse_args
from training.transfer import start_from

OTHER_SOUNDS = Path(__file__).resolve().parents[1] / "data" / "other-sounds"


def kind(path: Path) -> str:
    """The kind of an other-sounds recording: the folder below audio/ it sits in."""
    return path.relative_to(OTHER_SOUNDS / "audio").parts[0]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kinds", default="", help="comma-separated kinds to hold out (default: every kind)")
    own, rest = p.parse_known_args(argv)
    args = parse_args(["--no-save", "--outlier-dir", str(OTHER_SOUNDS), *rest])  # the recipe make train runs
    ds = load_dataset("esc10", SHIPPED_ESC10)
    base = FeatureSettings()
    data = decode_clips(ds.clips, ds.labels, Features(base))
    seconds = args.clip_seconds or choose_clip_seconds([len(w) / base.sample_rate for w in data.waves])
    features = Features(base.model_copy(update={"clip_seconds": seconds}))
    recordings = outliers(OTHER_SOUNDS, ds.folds, seed=args.seed)  # dealt as make train deals them
    kinds = own.kinds.split(",") if own.kinds else sorted({kind(c.path) for c in recordings})
    rows = []
    for held in kinds:
        others = decode_clips([c for c in recordings if kind(c.path) != held], ds.labels, Features(base))
        unheard = decode_clips([c for c in recordings if kind(c.path) == held], ds.labels, features)
        ev = evaluate(args, start_from(None, ds.labels, args.arch), features, ds, data, others)
        cal = calibrate(ev.logits, ev.targets, "held-out fold")
        # The rule models stored before familiarity: the same share of right answers kept, by top probability.
        right = ev.logits.argmax(1) == ev.targets
        by_probability = {"temperature": cal["temperature"],
                          "threshold": choose_threshold(softmax(ev.logits / cal["temperature"]).max(1), right)}
        z = predict_logits(ev.networks[0], ClipDataset(unheard.waves, unheard.targets, features, None))
        top = z.argmax(1)
        row = {
            "held_out_kind": held,
            "recordings": len(unheard.waves),
            "accuracy": float((ev.logits.argmax(1) == ev.targets).mean()),
            "in_set_with_unknown": accuracy_with_unknown(ev.logits, ev.targets, cal),
            "unknown_rate_kind_never_heard": float(unknown_mask(z, cal).mean()),
            "unknown_rate_heard_kinds_fold2": float(unknown_mask(ev.others_logits, cal).mean()),
            "unknown_rate_kind_never_heard_by_probability": float(unknown_mask(z, by_probability).mean()),
            "unknown_rate_heard_kinds_fold2_by_probability": float(unknown_mask(ev.others_logits, by_probability).mean()),
            "threshold": cal.get("familiarity_threshold"),
            "taken_for": ds.labels[max(set(top), key=list(top).count)],
        }
        rows.append(row)
        print("KINDS", row, flush=True)
    print_means("KINDS", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
