"""Knowledge distillation from a seed ensemble into one network, by grouped cross-validation (issue 33).

    FOLDS=2,3 OMP_NUM_THREADS=1 python -m experiments.distill --cv --no-save --outlier-dir data/other-sounds --predictions kd23.npz
    FOLDS=4,5 OMP_NUM_THREADS=1 python -m experiments.distill --cv --no-save --outlier-dir data/other-sounds --predictions kd45.npz
    python -m experiments.distill --merge kd.npz kd23.npz kd45.npz      # and kd.teachers.npz, kd.teacher0.npz
    python -m experiments.unknown_rules kd.npz kd.teachers.npz kd.teacher0.npz

training.train's cross-validation, with each fold's network trained differently: first TEACHERS
networks by the default recipe (seeds S, S+1, ...; seed S's is the network `--cv` alone trains),
then the student, one network of the same architecture by the same recipe (seed S+TEACHERS), whose
loss is (1 - ALPHA) x the recipe's loss + ALPHA x T^2 x KL(teachers || student), the teachers'
distribution being the mean of their softmax(logits / T) on the student's own batch (augmented and
mixed as it is), the student's its softmax(logits / T) (Hinton et al. 2015). The student is what
the run reports and writes to `--predictions`; the teachers' ensemble (their mean logits) goes to
`<predictions>.teachers.npz` and the first teacher alone to `<predictions>.teacher0.npz`, judged
on the same clips. FOLDS (optional; experiments/folds.py) holds out only those folds,
so two processes share the four on two cores; `--merge` joins their files in fold order.
Only for measuring: training.train does not distil. docs/training-recipe.md records the runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback

import training.train as train
from experiments import folds
from training.evaluate import predict_logits

TEACHERS = int(os.environ.get("TEACHERS", "2"))
T = float(os.environ.get("KD_T", "2.0"))
ALPHA = float(os.environ.get("KD_ALPHA", "0.5"))

_fit, _open_set_logits, _Learner = train.fit, train.open_set_logits, train.Learner
_teachers: dict[int, list[torch.nn.Module]] = {}  # id(student) -> its teachers
_current: list[torch.nn.Module] = []  # teachers of the network being trained now
_held_out: list[np.ndarray] = []  # the teachers' logits (teachers, clips, classes), in the order evaluate() asks for the student's
_others: list[np.ndarray] = []


class Distill(Callback):
    """Adds the distillation term to the recipe's loss (after MixUp has mixed the batch)."""

    order = 60

    def __init__(self, teachers: list[torch.nn.Module]):
        self.teachers = teachers

    def after_pred(self):
        if self.training:
            with torch.no_grad():
                probs = [torch.softmax(t(*self.xb).float() / T, dim=1) for t in self.teachers]
            self.target = torch.stack(probs).mean(dim=0)

    def after_loss(self):
        if self.training:
            logp = torch.log_softmax(self.pred.float() / T, dim=1)
            kd = torch.nn.functional.kl_div(logp, self.target, reduction="batchmean") * T * T
            self.learn.loss_grad = (1 - ALPHA) * self.learn.loss_grad + ALPHA * kd


def learner(*args, cbs=None, **kwargs):
    if _current:
        print(f"training the student of {len(_current)} teacher(s)", flush=True)
    return _Learner(*args, cbs=(cbs or []) + ([Distill(list(_current))] if _current else []), **kwargs)


def fit(args, start, features, data, labels, others=None):
    teachers = [_fit(train.argparse.Namespace(**{**vars(args), "seed": args.seed + k}), start, features, data, labels, others)
                for k in range(TEACHERS)]  # fmt: skip
    _current[:] = teachers
    try:
        student = _fit(train.argparse.Namespace(**{**vars(args), "seed": args.seed + TEACHERS}), start, features, data,
                       labels, others)  # fmt: skip
    finally:
        _current.clear()
    _teachers[id(student)] = teachers
    return student


def predict(net, dataset, *a, **kw):
    z = predict_logits(net, dataset, *a, **kw)
    if id(net) in _teachers and not open_set.busy:
        each = np.stack([predict_logits(t, dataset, *a, **kw) for t in _teachers[id(net)]])
        outliers = all(y == train.OUTLIER for y in dataset.targets)
        (_others if outliers else _held_out).append(each)
    return z


def open_set(networks, features, labels):
    open_set.busy = True  # its own predictions are not the held-out clips'
    try:
        kinds, z = _open_set_logits(networks, features, labels)
    finally:
        open_set.busy = False
    # (teachers, folds, clips, classes)
    open_set.teachers = np.stack([_open_set_logits(_teachers[id(n)], features, labels)[1] for n in networks], axis=1)
    return kinds, z


open_set.busy = False


def merge(out: Path, parts: list[Path]) -> None:
    for suffix in ("", ".teachers", ".teacher0"):
        folds.merge(out.with_suffix(suffix + ".npz"), [p.with_suffix(suffix + ".npz") for p in parts])


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--merge":
        merge(Path(argv[1]), [Path(p) for p in argv[2:]])
        return 0
    folds.restrict()
    train.fit, train.Learner, train.predict_logits, train.open_set_logits = fit, learner, predict, open_set
    print(f"distillation: {TEACHERS} teachers, T {T}, alpha {ALPHA}", flush=True)
    code = train.main(argv)
    if "--predictions" in argv:
        path = Path(argv[argv.index("--predictions") + 1])
        d = dict(np.load(path))
        # The ensemble (mean logits), and its first teacher alone: the default recipe at this seed.
        for name, pick in ((".teachers.npz", lambda z: z.mean(axis=0)), (".teacher0.npz", lambda z: z[0])):
            d.update(logits=pick(np.concatenate(_held_out, axis=1)), open_set_logits=pick(open_set.teachers))
            if _others:
                d["outlier_dir_logits"] = pick(np.concatenate(_others, axis=1))
            np.savez_compressed(path.with_suffix(name), **d)
            z = d["logits"]
            print(f"{name[1:-4]}: accuracy {(z.argmax(axis=1) == d['targets']).mean():.4f} on {len(z)} clips")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
