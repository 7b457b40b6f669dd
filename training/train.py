"""Train a sound classifier with fastai and save it into the BentoML model store.

    python -m training.train                                   # the shipped real recordings: the default model
    python -m training.train --cv --no-save                    # cross-validate the recipe over the shipped folds
    python -m training.train --dataset synthetic               # synthetic set (generated on first use), fast
    python -m training.train --dataset esc50 --data-dir data/ESC-50-master --epochs 60
    python -m training.train --dataset urbansound8k --data-dir data/UrbanSound8K --valid-fold 10
    python -m training.train --dataset folder --data-dir my_sounds/      # my_sounds/<label>/*.wav
    python -m training.train --dataset folder --data-dir my_sounds/ --group-pattern '^(.+?)_[0-9]+$'   # kettle_take3_01 -> kettle_take3
    python -m training.train --dataset folder --data-dir my_sounds/ --init-from sound-resnet:latest
    python -m training.train --outlier-dir other_sounds/      # recordings of none of the classes

How a model is made: train on every fold but one (--valid-fold, default the data set's first),
measure it on that fold and fit its calibration there (temperature, the familiarity threshold of "unknown");
and train once more, same recipe and seed, on every fold and ship that network with the measured
one's score and calibration (the refit: a third more data for ESC-10's four folds, about 3 points of
accuracy, and the borrowed threshold answered "unknown" as well or better; docs/training-recipe.md).
The refit never depends on the score it is judged by, so it trains in a second process while the
measured network trains here, each on half the threads (RefitBeside). --no-refit ships the measured network, with
its own score and calibration. With --cv every fold is held out in turn, the
pooled held-out predictions give the score (mean and spread over folds) and the calibration, and the
shipped network is trained on every fold. The metadata says which was done ("evaluation").
The window the model sees is chosen from the clips' durations (--clip-seconds overrides it).

Every held-out figure is grouped: clips cut from one recording stay on one side of every split
(ESC-50's src_file, UrbanSound8K's fsID; for a folder, in this order: --group-pattern, subfolders
of a class folder (dog/take3/*.wav), ESC-50 names <fold>-<source id>-<take>[-<class id>],
UrbanSound8K names <fsID>-<class id>-<occurrence>-<slice>, numbered names <stem>_NN / -NN / NN /
.NN / (N) / _partN when a class has two such stems or more besides its own name, as dog_01 ...
dog_40 also name separate recordings; details in training/datasets.py). The log and the metadata (dataset_groups)
say how many recordings each class has and how they were found. Before training, clips on both
sides of a split that are the same audio refuse the split, and near-duplicates (log-mel
fingerprints) are named in the log and counted in the metadata (leakage; training/leakage.py).

The model lands in the store as `sound-resnet:<version>` (see soundclassifier/store.py) with its
labels, feature settings, held-out metrics, calibration and a confusion matrix; `bentoml models
list` shows it. The store is $BENTOML_HOME (the Makefile points it at ./.bentoml unless you set it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import bentoml
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.callback.mixup import MixUp
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fastcore.basics import noop
from pydantic import ValidationError
from torch.utils.data import ConcatDataset, Subset

from soundclassifier.audio import as_audio
from soundclassifier.features import Features, FeatureSettings
from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.network import ARCHS, DEFAULT_ARCH, build_network, load_pretrained
from soundclassifier.options import describe
from soundclassifier.store import METRICS_FILE, save_model, write_json
from soundclassifier.store import summary as engines_summary
from training import leakage, outofset
from training.augment import AugmentSettings, ClipDataset
from training.calibrate import accuracy_with_unknown, calibrate, unknown_mask
from training.datasets import (
    DATASETS,
    OUTLIER,
    SHIPPED_ESC10,
    Dataset,
    DatasetError,
    Decoded,
    choose_clip_seconds,
    decode_clips,
    load_dataset,
    outliers,
)
from training.evaluate import format_report, plot_confusion, predict_logits, report
from training.transfer import Start, start_from

log = logging.getLogger("training")

# Defaults, chosen for a few hundred to a few thousand real clips trained from scratch on a CPU.
DEFAULTS = dict(
    dataset="esc10",  # the real recordings shipped in data/esc10 (ESC-10 folds 2-5, CC BY)
    data_dir=None,  # esc10: the shipped data/esc10; synthetic: data/synthetic (generated on first use)
    arch=DEFAULT_ARCH,  # ResNet-14 (ResNet-18 without its last stage, one-channel stem); see network.DEFAULT_ARCH
    epochs=40,  # one-cycle; a few hundred real clips need ~40 from scratch
    batch_size=32,
    lr=3e-3,  # peak one-cycle learning rate for Adam
    weight_decay=1e-2,
    mixup=0.4,  # mixup alpha (0 disables); strong regulariser for small audio sets
    specaugment=True,  # time/frequency masking + time shift + noise
    speed=0.0,  # speed perturbation: resample by up to +-this fraction (0 = off)
    outliers=0.25,  # outlier exposure: generated non-class clips, this share of the training set (0 = off)
    outlier_dir=None,  # outlier exposure with real recordings of none of the classes, when the user has them
    outlier_dir_share=0.25,  # of those, this many per training clip in each epoch, drawn afresh (an epoch's cost does not grow with the folder)
    valid_fold=None,  # held-out fold; None = the data set's first (ESC-50: 1, shipped ESC-10: 2)
    refit=True,  # ship a network trained on every fold, with the score of one measured without valid_fold
    clip_seconds=None,  # model window; None = chosen from the clip durations (choose_clip_seconds)
    seed=0,
    group_pattern=None,  # folder: a regex whose first group names a file's recording; None = the built-in rules
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULTS
    p.add_argument("--dataset", choices=DATASETS, default=d["dataset"], help="data set layout; esc10 = the real recordings shipped in data/esc10 (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=d["data_dir"], help="root of the data set (default: data/esc10 for esc10, data/synthetic for synthetic, generated there if absent)")
    p.add_argument("--arch", choices=ARCHS, default=d["arch"], help="network architecture (default %(default)s: ResNet-18 without its last stage, which cross-validated 3 points above ResNet-18 on the shipped clips for 0.7x the CPU; --init-from uses the stored model's)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="training epochs, one-cycle schedule (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="mini-batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay (default %(default)s)")
    p.add_argument("--mixup", type=float, default=d["mixup"], help="mixup alpha; 0 turns mixup off (default %(default)s)")
    p.add_argument("--no-specaugment", dest="specaugment", action="store_false", help="turn off masking, shift and noise augmentation")
    p.add_argument("--speed", type=float, default=d["speed"], help="speed perturbation: play each training clip up to this fraction faster or slower, pitch with tempo (default %(default)s = off)")
    p.add_argument("--outliers", type=float, default=d["outliers"], help="outlier exposure: add generated sounds of none of the classes (noise, tones, silence, synthetic) to training with a uniform target, this many per training clip; 0 turns it off (default %(default)s)")
    p.add_argument("--outlier-dir", type=Path, default=d["outlier_dir"], help="outlier exposure with your own recordings of none of the classes (any audio files under this directory, any length): trained on with a uniform target beside the generated ones; those dealt to the held-out fold are kept out of training and measure how often the model says unknown to them")
    p.add_argument("--outlier-dir-share", type=float, default=d["outlier_dir_share"], help="with --outlier-dir: each epoch trains on at most this many of its recordings per training clip, drawn afresh every epoch, so a large folder costs no more per epoch than a small one (default %(default)s; all of them when the folder holds fewer)")
    p.add_argument("--group-pattern", metavar="REGEX", default=d["group_pattern"], help="folder only: which files are cut from one recording; searched in each file's path below its class folder without the suffix (take3/kettle_01), the first capture group (else the whole match) names the recording, e.g. '^(.+?)_[0-9]+$'; files it does not match fall to the built-in rules: a subfolder of the class folder, ESC-50 names <fold>-<source id>-<take>[-<class id>], UrbanSound8K names <fsID>-<class id>-<occurrence>-<slice>, numbered names <stem>_NN, -NN, ' NN', .NN, ' (N)', _partN (when a class has two such stems or more besides its own name: dog_01 .. dog_40 are separate recordings), else a recording of its own. No recording is split between training and held-out clips")
    p.add_argument("--valid-fold", type=int, default=d["valid_fold"], help="fold held out for evaluation and calibration (default: the data set's first fold)")
    p.add_argument("--cv", action="store_true", help="cross-validate: hold out every fold in turn, report mean and spread, calibrate on all held-out predictions")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=d["refit"], help="after the evaluation, train once more on every fold and ship that network with the evaluated one's score and calibration; --no-refit ships the evaluated network (default: refit; always with --cv)")
    p.add_argument("--clip-seconds", type=float, default=d["clip_seconds"], help="window the model sees, in seconds (default: from the clip durations, 0.75-5 s)")
    p.add_argument("--init-from", metavar="TAG", default=None, help="start from a stored model's weights (e.g. sound-resnet:latest); a fresh head when the labels differ")
    p.add_argument("--pretrained", type=Path, default=None, help="local torchvision ImageNet state_dict for --arch resnet*; nothing is downloaded")
    p.add_argument("--clips-per-class", type=int, default=40, help="synthetic only: clips per class to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed for splits, init and augmentation (default %(default)s)")
    p.add_argument("--predictions", type=Path, default=None, help="also write the held-out and out-of-set logits to this .npz file (for analysis)")
    p.add_argument("--no-save", dest="save", action="store_false", help="evaluate only; do not write to the model store")
    p.add_argument("--gpu", action="store_true", help="train on the GPU when there is one (default: CPU)")
    p.add_argument("--fit-all-to", type=Path, default=None, help=argparse.SUPPRESS)  # RefitBeside's child: the refit only, weights to this file
    p.add_argument("--feature", metavar="NAME=VALUE", action="append", default=[], help="a spectrogram setting other than the default, stored with the model (repeatable): any field of soundclassifier.features.FeatureSettings, e.g. --feature n_mels=64; clip_seconds has its own flag")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="CPU training precision; auto = bf16 autocast where the CPU has native bf16 (2.5x faster here) and the input is at least 33 frames wide, else fp32")
    a = p.parse_args(argv)
    if a.data_dir is None:
        defaults = {"esc10": SHIPPED_ESC10, "synthetic": Path("data/synthetic")}
        if a.dataset not in defaults:
            p.error(f"--data-dir is required for --dataset {a.dataset}")
        a.data_dir = defaults[a.dataset]
    if a.init_from and a.pretrained:
        p.error("--init-from and --pretrained both choose the starting weights: give one")
    if a.outlier_dir_share < 0:
        p.error("--outlier-dir-share is a number of recordings per training clip: 0 or more")
    if a.cv and a.valid_fold is not None:
        p.error("--cv holds out every fold in turn: drop --valid-fold")
    try:
        feature_settings(a.feature)  # refused here, before any decoding
    except ValueError as e:
        p.error(f"--feature: {e}")
    if a.feature and a.init_from:
        p.error("--init-from trains on the stored model's spectrogram settings: drop --feature")
    return a


def feature_settings(pairs: list[str]) -> FeatureSettings:
    """FeatureSettings from NAME=VALUE strings over the defaults; pydantic checks names and values."""
    values = {}
    for pair in pairs:
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or name == "clip_seconds":
            raise ValueError(f"expected NAME=VALUE with NAME a spectrogram setting other than clip_seconds, got {pair!r}")
        values[name] = value
    try:
        return FeatureSettings.model_validate(values)
    except ValidationError as e:
        raise ValueError(describe(e)) from None


BF16_MIN_FRAMES = 33
"""Inputs narrower than this train in fp32 even where bf16 is available: the ResNet's stride-2
convolutions then produce maps one frame wide, and oneDNN's bf16 convolution returned non-finite
values for those (torch 2.14.1 here: 9 of 30 fresh ResNet-18 forward passes at 22 frames, channels_last,
0 of 20 at 33, 0 of 30 at 44 and 216; fp32 never)."""


def use_bf16(args: argparse.Namespace, device: torch.device, frames: int) -> bool:
    if device.type != "cpu" or args.precision == "fp32":
        return False
    if args.precision == "bf16":
        return True
    return cpu_has_bf16() and frames >= BF16_MIN_FRAMES


OUTLIER_WEIGHT = 0.5  # weight of the uniform-target term (Hendrycks et al. 2019, "Deep Anomaly Detection with Outlier Exposure")


class OutlierExposureLoss(torch.nn.Module):
    """Cross-entropy for class targets; for OUTLIER targets, cross-entropy against the uniform
    distribution (the mean negative log-probability over classes), weighted by OUTLIER_WEIGHT.
    Honours `reduction` so fastai's MixUp can mix two targets per clip."""

    y_int = True  # fastai's MixUp mixes the losses of integer targets (instead of the targets themselves)

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)
        outlier = target == OUTLIER
        in_set = -logp.gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
        loss = torch.where(outlier, OUTLIER_WEIGHT * -logp.mean(dim=1), in_set)
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


def outlier_waves(args: argparse.Namespace, features: Features, labels: list[str], n_train: int) -> list:
    """Waveforms for outlier exposure: OUTLIER_KINDS only, from another seed than the open-set check."""
    if args.outliers <= 0:
        return []
    s = features.settings
    per_kind = max(1, math.ceil(args.outliers * n_train / len(outofset.OUTLIER_KINDS)))
    made = outofset.clips(labels, s.clip_seconds, s.sample_rate, per_kind=per_kind, seed=outofset.CHECK_SEED + 1 + args.seed,
                          kinds=outofset.OUTLIER_KINDS)  # fmt: skip
    return [features.waveform(as_audio(w[None], s.sample_rate, "generated")) for _, w in made]


class NoValidation(Callback):
    """Skip fastai's per-epoch validation: the held-out fold is measured once, after training."""

    def before_fit(self):
        self.learn.recorder.valid_metrics = False

    def before_validate(self):
        raise CancelValidException()


class EpochLog(Callback):
    """One log line per epoch (loss, time) where fastai's progress bar would redraw itself into a
    file or a pipe as thousands of carriage-return fragments."""

    order = 60  # after the Recorder has averaged the epoch's loss

    def before_fit(self):
        self.fit_start = time.perf_counter()

    def before_epoch(self):
        self.epoch_start = time.perf_counter()

    def after_epoch(self):
        now = time.perf_counter()
        log.info("epoch %d/%d: train loss %.4f, %.1f s (%.0f s so far)", self.epoch + 1, self.n_epoch,
                 float(self.recorder.smooth_loss.value), now - self.epoch_start, now - self.fit_start)


class DrawRecordings(Callback):
    """Before each epoch, a fresh draw (without replacement, seeded by the epoch) of which of the
    `--outlier-dir` recordings it trains on: `drawn` keeps its size, so fastai's epoch length holds."""

    def __init__(self, drawn: Subset, seed: int):
        self.drawn, self.seed = drawn, seed

    def before_epoch(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.drawn.indices = rng.choice(len(self.drawn.dataset), len(self.drawn), replace=False).tolist()


class CPUBFloat16(Callback):
    """bf16 autocast + channels_last on the CPU (fastai's MixedPrecision callback is CUDA only).

    Weights and optimizer state stay fp32; only activations run in bf16. The saved model is fp32.
    """

    order = 10  # after MixUp has mixed the inputs

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast.__enter__()

    def after_loss(self):
        self.autocast.__exit__(None, None, None)

    def after_fit(self):
        self.learn.model.to(memory_format=torch.contiguous_format)


def fit(args: argparse.Namespace, start: Start, features: Features, data: Decoded, labels: list[str],
        others: Decoded | None = None) -> torch.nn.Module:  # fmt: skip
    """Train a network on `data` (and the recordings of none of the classes in `others`) with the
    recipe in `args`; returns it on the CPU in eval mode."""
    set_seed(args.seed, reproducible=True)
    augment = replace(AugmentSettings() if args.specaugment else AugmentSettings.off(), speed=args.speed)
    generated = outlier_waves(args, features, labels, len(data.waves))
    train_ds = ClipDataset(data.waves + generated, data.targets + [OUTLIER] * len(generated), features, augment)
    cbs = [NoValidation()] + ([MixUp(args.mixup)] if args.mixup > 0 else [])
    if others and others.waves:
        recordings = ClipDataset(others.waves, [OUTLIER] * len(others.waves), features, augment)
        per_epoch = min(len(recordings), math.ceil(args.outlier_dir_share * len(data.waves)))
        drawn = Subset(recordings, range(per_epoch))
        if per_epoch < len(recordings):
            cbs.append(DrawRecordings(drawn, args.seed))
        train_ds = ConcatDataset([train_ds, drawn])
    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    dls = DataLoaders.from_dsets(train_ds, train_ds, bs=args.batch_size, device=device, num_workers=0)

    net = build_network(start.arch, len(labels))
    if start.state:
        net.load_state_dict(start.state, strict=False)
    if args.pretrained:
        fresh = load_pretrained(net, start.arch, args.pretrained)
        log.info("loaded %s; fresh parameters: %s", args.pretrained, ", ".join(fresh))
    if use_bf16(args, device, features.settings.frames):
        cbs.append(CPUBFloat16())
    loss = OutlierExposureLoss() if len(train_ds) > len(data.waves) else CrossEntropyLossFlat()
    learn = Learner(dls, net, loss_func=loss, metrics=[], wd=args.weight_decay, cbs=cbs)
    if not sys.stdout.isatty():  # fastai's bar (on stdout) on a terminal; one line per epoch in a log
        learn.remove_cb(ProgressCallback)
        learn.logger = noop
        learn.add_cb(EpochLog())
    learn.fit_one_cycle(args.epochs, args.lr)
    net = learn.model.cpu().eval()
    broken = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise RuntimeError(f"training diverged: non-finite values in {', '.join(broken[:5])}; try a lower --lr or --precision fp32")
    return net


@dataclass
class Evaluation:
    """Held-out predictions of the networks trained without them, pooled over the folds held out."""

    method: str  # "holdout" or "cross-validation"
    folds: list[int]  # folds held out
    logits: np.ndarray  # (n, classes), in the order of `targets`
    targets: np.ndarray
    fold_of: np.ndarray  # fold of each held-out clip
    per_fold: dict[int, dict]  # report() of each fold
    networks: list[torch.nn.Module]  # one per fold held out
    samples: np.ndarray  # up to 64 held-out model inputs (engine agreement checks)
    sample_targets: np.ndarray  # their classes (held-out accuracy of each engine)
    calibration: np.ndarray  # up to CALIBRATION_CLIPS training inputs of the first network (INT8)
    others_logits: np.ndarray | None = None  # --outlier-dir recordings of the folds held out, not trained on


CALIBRATION_CLIPS = 200  # INT8 calibration: NNCF's default subset is 300; 32 sufficed for ResNet-18 here


def calibration_inputs(dataset: ClipDataset, seed: int) -> np.ndarray:
    """Model inputs of up to CALIBRATION_CLIPS training clips drawn evenly at random."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(dataset))[:CALIBRATION_CLIPS])
    return np.stack([np.asarray(dataset[i][0]) for i in chosen])


def held_out_folds(args: argparse.Namespace, ds: Dataset) -> list[int]:
    """The folds measured: every fold with --cv, else --valid-fold (default: the data set's first)."""
    return ds.folds if args.cv else [args.valid_fold if args.valid_fold is not None else ds.folds[0]]


def evaluate(args, start: Start, features: Features, ds: Dataset, data: Decoded, others: Decoded | None = None) -> Evaluation:
    folds = held_out_folds(args, ds)
    logits, targets, fold_of, per_fold, nets, samples, others_logits = [], [], [], {}, [], None, []
    sample_targets = calibration = None
    for fold in folds:
        train, valid = data.split(ds, fold)
        if not train.waves or not valid.waves:
            raise SystemExit(f"nothing left to train or validate on after skipping unreadable files (fold {fold})")
        log.info("fold %d: %d training clips, %d held out", fold, len(train.waves), len(valid.waves))
        others_train, others_valid = others.split(ds, fold) if others else (None, None)
        net = fit(args, start, features, train, ds.labels, others_train)
        if others_valid and others_valid.waves:
            others_logits.append(predict_logits(net, ClipDataset(others_valid.waves, others_valid.targets, features, None)))
        valid_ds = ClipDataset(valid.waves, valid.targets, features, None)
        z = predict_logits(net, valid_ds)
        per_fold[fold] = report(valid.targets, z.argmax(axis=1), ds.labels)
        log.info("fold %d\n%s", fold, format_report(per_fold[fold]))
        logits.append(z)
        targets += valid.targets
        fold_of += [fold] * len(valid.targets)
        nets.append(net)
        if samples is None:
            held_out = range(min(64, len(valid_ds)))
            samples = torch.stack([valid_ds[i][0] for i in held_out]).numpy()
            sample_targets = np.array([valid_ds[i][1] for i in held_out])
            calibration = calibration_inputs(ClipDataset(train.waves, train.targets, features, None), args.seed)
    return Evaluation(
        method="cross-validation" if args.cv else "holdout",
        folds=folds,
        logits=np.concatenate(logits),
        targets=np.asarray(targets),
        fold_of=np.asarray(fold_of),
        per_fold=per_fold,
        networks=nets,
        samples=samples,
        sample_targets=sample_targets,
        calibration=calibration,
        others_logits=np.concatenate(others_logits) if others_logits else None,
    )


def open_set_logits(networks: list[torch.nn.Module], features: Features, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Sounds from none of the classes (training.outofset) and each network's logits for them:
    (kinds, array of shape (networks, clips, classes))."""
    s = features.settings
    made = outofset.clips(labels, s.clip_seconds, s.sample_rate)
    waves = [features.waveform(as_audio(w[None], s.sample_rate, "generated")) for _, w in made]
    items = ClipDataset(waves, [0] * len(waves), features, None)
    return [kind.split(":")[0] for kind, _ in made], np.stack([predict_logits(net, items) for net in networks])


def open_set_report(kinds: list[str], logits: np.ndarray, ev: Evaluation, calibration: dict,
                    others: Decoded | None = None) -> dict:  # fmt: skip
    """How often those sounds get "unknown" by the stored rule (averaged over the evaluated networks),
    beside the in-set accuracy with "unknown" counted wrong; with --outlier-dir, also how often the
    held-out share of the user's recordings of none of the classes does."""
    unknown = np.mean([unknown_mask(z, calibration) for z in logits], axis=0)
    by_kind = {k: round(float(unknown[[i for i, kind in enumerate(kinds) if kind == k]].mean()), 4)
               for k in sorted(set(kinds))}  # fmt: skip
    return {
        "n": len(kinds),
        "unknown_rate": round(float(unknown.mean()), 4),
        "unknown_rate_by_kind": by_kind,
        "in_set_accuracy_with_unknown": round(accuracy_with_unknown(ev.logits, ev.targets, calibration), 4),
        "in_set_unknown_rate": round(float(unknown_mask(ev.logits, calibration).mean()), 4),
        "source": "training.outofset, generated offline: silence, noise, tones, speech-like babble, music, "
        "synthetic classes not among the labels; with --outliers, training saw other clips of the kinds "
        f"{', '.join(outofset.OUTLIER_KINDS)}, never speech or music",
        **({"recordings": recordings_report(others, ev, calibration)} if others else {}),
    }


def recordings_report(others: Decoded, ev: Evaluation, calibration: dict) -> dict:
    held_out = 0 if ev.others_logits is None else len(ev.others_logits)
    # Of the held-out ones: what an unheard recording of their kinds gets. None held out (a folder of
    # a few recordings, all dealt to training folds): no rate (BentoML's metadata refuses None).
    rate = {} if ev.others_logits is None else {
        "unknown_rate": round(float(unknown_mask(ev.others_logits, calibration).mean()), 4)}
    return {
        "n": len(others.waves),
        "n_held_out": held_out,
        **rate,
        "source": f"--outlier-dir: {len(others.waves)} recordings of none of the classes, dealt into the folds; "
        f"the {held_out} of the held-out fold(s) were not trained on and give unknown_rate",
    }


def summary(ev: Evaluation, labels: list[str]) -> dict:
    """Pooled held-out report plus, for cross-validation, the spread over folds."""
    pooled = report(ev.targets, ev.logits.argmax(axis=1), labels)
    acc = np.array([m["accuracy"] for m in ev.per_fold.values()])
    f1 = np.array([m["macro_f1"] for m in ev.per_fold.values()])
    pooled["per_fold_accuracy"] = {str(f): m["accuracy"] for f, m in ev.per_fold.items()}
    pooled["accuracy_mean"] = round(float(acc.mean()), 4)
    pooled["accuracy_std"] = round(float(acc.std()), 4)
    pooled["macro_f1_mean"] = round(float(f1.mean()), 4)
    pooled["macro_f1_std"] = round(float(f1.std()), 4)
    return pooled


def code_revision() -> str:
    """The commit that trained the model (`git describe`), `-dirty` when tracked files differ from it;
    "unknown" outside a git checkout."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def library_versions() -> dict[str, str]:
    pkgs = ("torch", "torchaudio", "torchvision", "fastai", "bentoml", "soundfile")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


class RefitBeside:
    """The refit, trained in a process of its own while this one evaluates.

    The refit depends on nothing the evaluation finds, and one training barely uses a second core
    (on 2 cores, 4 epochs took 25 s on two threads and 27 s on one; two one-thread trainings side
    by side, 31-32 s each), so the two trainings run side by side, each on half the threads:
    `make train` in about 0.64x the time of one after the other. The child runs this same command
    with --fit-all-to: it reads and decodes the data again, trains the network on every fold with
    the same recipe and seed (what `fit` would have trained here) and writes its weights as
    safetensors, which `result` loads into a fresh network: nothing is pickled on the way. Its log
    lines say "refit"."""

    def __init__(self, argv: list[str]):
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="refit-")
        self.weights = Path(self._dir.name) / "refit.safetensors"
        self._threads = torch.get_num_threads()  # this process's, given back once the refit is in
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, self._threads - self._threads // 2))}
        # stdout not a terminal: the child logs one line per epoch instead of drawing progress bars.
        self.process = subprocess.Popen([sys.executable, "-m", "training.train", *argv, "--fit-all-to", str(self.weights)],
                                        env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        torch.set_num_threads(max(1, self._threads // 2))

    def result(self, arch: str, n_classes: int) -> torch.nn.Module:
        """The refit network (waits for it); raises if the child failed."""
        from safetensors.torch import load_model

        failed = self.process.wait() != 0 or not self.weights.is_file()
        torch.set_num_threads(self._threads)  # the export's checks have the machine to themselves
        if failed:
            raise RuntimeError(f"the refit (trained in a process of its own) failed with exit code {self.process.returncode}; "
                               "its log is above")  # fmt: skip
        net = build_network(arch, n_classes)
        load_model(net, str(self.weights))
        return net.eval()

    def stop(self) -> None:
        if self.process.poll() is None:  # the evaluation failed: the refit is of no use
            self.process.kill()
            self.process.wait()
        torch.set_num_threads(self._threads)
        self._dir.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    refit_only = args.fit_all_to is not None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s " + ("refit " if refit_only else "") + "%(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    ds = load_dataset(args.dataset, args.data_dir, seed=args.seed, clips_per_class=args.clips_per_class,
                      group_pattern=args.group_pattern)  # fmt: skip
    log.info("%s: %d clips, %d classes, folds %s", ds.name, len(ds.clips), len(ds.labels), ds.folds)
    recordings = ds.groups()
    log.info("%d recordings (no recording on both sides of a split), found by %s; per class: %s", recordings["n"],
             recordings["how"], ", ".join(f"{lab} {n}" for lab, n in recordings["per_class"].items()))  # fmt: skip
    start = start_from(args.init_from, ds.labels, args.arch)
    base = start.settings or feature_settings(args.feature)
    # Decoding and resampling depend on the sample rate only; the window is chosen from what was read.
    data = decode_clips(ds.clips, ds.labels, Features(base))
    if not data.waves:
        raise SystemExit("no clip of the data set could be read")
    durations = [len(w) / base.sample_rate for w in data.waves]
    clip_seconds = args.clip_seconds or choose_clip_seconds(durations)
    settings = base.model_copy(update={"clip_seconds": clip_seconds})
    features = Features(settings)
    log.info("window %.2f s (clip durations: median %.2f s, 95th percentile %.2f s)",
             clip_seconds, np.median(durations), np.percentile(durations, 95))  # fmt: skip
    log.info("network %s", start.arch)

    others = None
    if args.outlier_dir:
        other_clips = outliers(args.outlier_dir, ds.folds, seed=args.seed)
        shared = {c.path.resolve() for c in other_clips} & {c.path.resolve() for c in ds.clips}
        if shared:  # the same clip with a class target and the uniform one: the user pointed at the data
            raise DatasetError(f"--outlier-dir {args.outlier_dir} holds {len(shared)} clip(s) of the data set itself, "
                               f"e.g. {min(shared)}: give a directory of sounds of none of the classes")  # fmt: skip
        others = decode_clips(other_clips, ds.labels, Features(base))
        if not others.waves:
            raise SystemExit(f"no recording under --outlier-dir {args.outlier_dir} could be read")
        log.info("outlier exposure with %d recordings of none of the classes from %s (%d groups by file name)",
                 len(others.waves), args.outlier_dir, len({c.recording for c in others.clips}))  # fmt: skip
    if refit_only:  # RefitBeside's child
        from safetensors.torch import save_model as save_weights

        save_weights(fit(args, start, features, data, ds.labels, others), str(args.fit_all_to))
        return 0
    # Before any training: the same audio on both sides of a split (the names did not tell) refuses it.
    held_out = held_out_folds(args, ds)
    pooled = Decoded(data.waves + (others.waves if others else []), data.targets + (others.targets if others else []),
                     data.clips + (others.clips if others else []))  # fmt: skip
    leaks = leakage.check(pooled, Features(base), held_out, ds.root)
    refit = args.save and (args.refit or args.cv)  # whatever the evaluation finds: it is not judged by its own score
    beside = RefitBeside(argv) if refit and not args.gpu else None
    try:
        ev = evaluate(args, start, features, ds, data, others)
        metrics = summary(ev, ds.labels)
        groups = ev.fold_of if args.cv else None  # None: calibrate splits one held-out fold in halves
        method = (f"temperature scaling on the held-out predictions of {len(ev.folds)}-fold cross-validation "
                  f"(folds {', '.join(map(str, ev.folds))})" if args.cv else
                  f"temperature scaling on held-out fold {ev.folds[0]}")  # fmt: skip
        calibration = calibrate(ev.logits, ev.targets, method, groups=groups)
        kinds, oos_logits = open_set_logits(ev.networks, features, ds.labels)
        open_set = open_set_report(kinds, oos_logits, ev, calibration, others)
        if args.predictions:
            np.savez_compressed(args.predictions, labels=np.array(ds.labels), logits=ev.logits, targets=ev.targets,
                                folds=ev.fold_of, open_set_kinds=np.array(kinds), open_set_logits=oos_logits,
                                **({} if ev.others_logits is None else {"outlier_dir_logits": ev.others_logits}))  # fmt: skip
        print(format_report(metrics))
        if args.cv:
            print(f"cross-validation over {len(ev.folds)} folds: accuracy {metrics['accuracy_mean']:.4f} ± "
                  f"{metrics['accuracy_std']:.4f}, macro-F1 {metrics['macro_f1_mean']:.4f} ± {metrics['macro_f1_std']:.4f}")  # fmt: skip
        print(f"calibration: {json.dumps(calibration)}")
        print(f"open set: {json.dumps(open_set)}")
        if data.skipped:
            print(f"skipped {len(data.skipped)} unreadable file(s); see the log above")
        if not args.save:
            return 0

        if refit:
            log.info("refit on every fold: %d clips%s", len(data.waves), " (trained beside the evaluation)" if beside else "")
            net = beside.result(start.arch, len(ds.labels)) if beside else fit(args, start, features, data, ds.labels, others)
            when = "beside" if beside else "after"
            shipped = f"trained on every fold ({', '.join(map(str, ds.folds))}) {when} the evaluation, same recipe and seed"
            # Its calibration is the evaluated networks': how often it answers "unknown" at it to the
            # same out-of-set sounds (generated, so none of them was trained on) shows whether it carries over.
            _, z = open_set_logits([net], features, ds.labels)
            shipped_unknown = float(unknown_mask(z[0], calibration).mean())
            open_set["shipped_network_unknown_rate"] = round(shipped_unknown, 4)
            print(f"shipped network: unknown on {shipped_unknown:.1%} of the out-of-set sounds at the stored threshold")
        else:
            net = ev.networks[0]
            shipped = f"the evaluated network (trained without fold {ev.folds[0]})"

        def reports(folder: Path) -> None:
            # The labels in class order: the confusion matrix follows them (the JSON's keys are sorted).
            write_json(folder / METRICS_FILE, {**metrics, "labels": ds.labels, "skipped_files": data.skipped})
            plot_confusion(metrics, ds.labels, folder / "confusion_matrix.png")

        train_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if v is not None}
        evaluation = {
            "method": ev.method,
            "held_out_folds": ev.folds,
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "n_valid": metrics["n_valid"],
            "per_fold_accuracy": metrics["per_fold_accuracy"],
            "shipped_model": shipped,
        }
        if args.cv:
            evaluation.update({k: metrics[k] for k in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std")})
        # What the stored score is, where /info and the page show it: a grouped held-out figure of the
        # measured network(s), not a score of the shipped (refit) network, which has heard every clip.
        n_recordings = len({c.recording for c in data.clips if c.fold in ev.folds})
        evaluation["estimate"] = (
            f"grouped {len(ev.folds)}-fold cross-validation estimate: {metrics['n_valid']} clips of {n_recordings} "
            "recordings, each predicted by a network trained on no clip of its recording" if args.cv else
            f"grouped held-out estimate: fold {ev.folds[0]}, {metrics['n_valid']} clips of {n_recordings} recordings, "
            "none of whose clips the measured network trained on")  # fmt: skip
        tag = save_model(
            net,
            arch=start.arch,
            labels=ds.labels,
            settings=settings,
            metadata={
                "dataset": ds.name,
                "dataset_fingerprint": ds.fingerprint(),
                **({"outlier_dir_fingerprint": Dataset("outliers", args.outlier_dir, others.clips, []).fingerprint()} if others else {}),
                "n_clips": len(ds.clips),
                "dataset_groups": recordings,
                "leakage": leaks,
                **({} if args.cv else {"valid_fold": ev.folds[0]}),
                "evaluation": evaluation,
                "metrics": {**{k: metrics[k] for k in ("accuracy", "macro_f1", "n_valid")}, "estimate": evaluation["estimate"]},
                "per_class_recall": {lab: m["recall"] for lab, m in metrics["per_class"].items()},
                "calibration": calibration,
                "open_set": open_set,
                "clip_durations_s": {"median": round(float(np.median(durations)), 3),
                                     "p95": round(float(np.percentile(durations, 95)), 3)},  # fmt: skip
                **({"init_from": start.describe()} if args.init_from else {}),
                "skipped_files": len(data.skipped),
                "train_args": json.loads(json.dumps(train_args)),
                "train_seconds": round(time.time() - started, 1),
                "versions": library_versions(),
                "code_revision": code_revision(),
            },
            samples=ev.samples,
            # A refit network has trained on these clips: its engines are checked for agreement on
            # them, but an accuracy there would not be a held-out one, so none is stored.
            sample_targets=None if refit else ev.sample_targets,
            calibration=ev.calibration,
            extra_files=reports,
        )
        print(f"saved {tag}")
        print(f"engines: {engines_summary(bentoml.models.get(tag).info.metadata['engines'])}")
        return 0
    finally:
        if beside is not None:
            beside.stop()


if __name__ == "__main__":
    sys.exit(main())
