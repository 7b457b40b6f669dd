"""Train a sound classifier with fastai and save it into the BentoML model store.

    python -m training.train                                   # synthetic set, default model
    python -m training.train --dataset esc50 --data-dir data/ESC-50-master --epochs 60
    python -m training.train --dataset urbansound8k --data-dir data/UrbanSound8K --valid-fold 10
    python -m training.train --dataset folder --data-dir my_sounds/      # my_sounds/<label>/*.wav
    python -m training.train --dataset esc50 --data-dir ... --cv         # cross-validate all folds

The model lands in the store as `sound-resnet:<version>` (see soundclassifier/store.py) with its
labels, feature settings, held-out metrics and a confusion matrix; `bentoml models list` shows it.
The store is $BENTOML_HOME (the Makefile points it at ./.bentoml unless you set it).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import bentoml
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import MixUp
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import set_seed

from soundclassifier.features import Features, FeatureSettings
from soundclassifier.hardware import cpu_has_bf16
from soundclassifier.network import ARCHS, build_network, load_pretrained
from soundclassifier.store import METRICS_FILE, save_model, summary, write_json
from training.augment import AugmentSettings, ClipDataset
from training.datasets import DATASETS, Dataset, decode_clips, load_dataset
from training.evaluate import format_report, plot_confusion, predict_dataset, report

log = logging.getLogger("training")

# Defaults, chosen for a few hundred to a few thousand real clips trained from scratch on a CPU.
DEFAULTS = dict(
    dataset="synthetic",  # offline default; see training/synthetic.py
    data_dir=None,  # synthetic: data/synthetic (generated on first use)
    arch="resnet18",  # torchvision ResNet-18 with a one-channel stem
    epochs=40,  # one-cycle; a few hundred real clips need ~40 from scratch (make train: 12 on synthetic)
    batch_size=32,
    lr=3e-3,  # peak one-cycle learning rate for Adam
    weight_decay=1e-2,
    mixup=0.4,  # mixup alpha (0 disables); strong regulariser for small audio sets
    specaugment=True,  # time/frequency masking + time shift + noise
    valid_fold=1,  # held-out fold (ESC-50 / synthetic: 1-5, UrbanSound8K: 1-10)
    seed=0,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULTS
    p.add_argument("--dataset", choices=DATASETS, default=d["dataset"], help="data set layout (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=d["data_dir"], help="root of the data set (synthetic: generated here if absent; default data/synthetic)")
    p.add_argument("--arch", choices=ARCHS, default=d["arch"], help="network architecture (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help="training epochs, one-cycle schedule (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="mini-batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay (default %(default)s)")
    p.add_argument("--mixup", type=float, default=d["mixup"], help="mixup alpha; 0 turns mixup off (default %(default)s)")
    p.add_argument("--no-specaugment", dest="specaugment", action="store_false", help="turn off masking, shift and noise augmentation")
    p.add_argument("--valid-fold", type=int, default=d["valid_fold"], help="fold held out for evaluation (default %(default)s)")
    p.add_argument("--cv", action="store_true", help="cross-validate: train once per fold, report mean and spread, save no model")
    p.add_argument("--pretrained", type=Path, default=None, help="local torchvision ImageNet state_dict for --arch resnet*; nothing is downloaded")
    p.add_argument("--clips-per-class", type=int, default=40, help="synthetic only: clips per class to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed for splits, init and augmentation (default %(default)s)")
    p.add_argument("--no-save", dest="save", action="store_false", help="evaluate only; do not write to the model store")
    p.add_argument("--gpu", action="store_true", help="train on the GPU when there is one (default: CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="CPU training precision; auto = bf16 autocast where the CPU has native bf16 (2.5x faster here), else fp32")
    a = p.parse_args(argv)
    if a.data_dir is None:
        if a.dataset != "synthetic":
            p.error(f"--data-dir is required for --dataset {a.dataset}")
        a.data_dir = Path("data/synthetic")
    return a


def train_fold(args: argparse.Namespace, ds: Dataset, settings: FeatureSettings, valid_fold: int):
    """Train on every fold but `valid_fold`.

    Returns the network, held-out metrics, skipped files, up to 64 held-out model inputs with their
    classes (kept with the model: every engine is checked against PyTorch on them), and up to
    CALIBRATION_CLIPS model inputs of training clips, unaugmented (INT8 calibration).
    """
    set_seed(args.seed, reproducible=True)
    features = Features(settings)
    train_clips, valid_clips = ds.split(valid_fold)
    train = decode_clips(train_clips, ds.labels, features)
    valid = decode_clips(valid_clips, ds.labels, features)
    if not train.waves or not valid.waves:
        raise SystemExit(f"nothing left to train or validate on after skipping unreadable files (fold {valid_fold})")
    log.info("fold %d: %d training clips, %d held out", valid_fold, len(train.waves), len(valid.waves))

    augment = AugmentSettings() if args.specaugment else AugmentSettings.off()
    train_ds = ClipDataset(train.waves, train.targets, features, augment)
    valid_ds = ClipDataset(valid.waves, valid.targets, features, None)
    device = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=args.batch_size, device=device, num_workers=0)

    net = build_network(args.arch, len(ds.labels))
    if args.pretrained:
        fresh = load_pretrained(net, args.arch, args.pretrained)
        log.info("loaded %s; fresh parameters: %s", args.pretrained, ", ".join(fresh))
    cbs = [MixUp(args.mixup)] if args.mixup > 0 else []
    if device.type == "cpu" and (args.precision == "bf16" or (args.precision == "auto" and cpu_has_bf16())):
        cbs.append(CPUBFloat16())
    learn = Learner(dls, net, loss_func=CrossEntropyLossFlat(), metrics=[accuracy], wd=args.weight_decay, cbs=cbs)
    learn.fit_one_cycle(args.epochs, args.lr)

    net = learn.model.cpu().eval()
    preds = predict_dataset(net, valid_ds)
    metrics = report(valid.targets, preds, ds.labels)
    held_out = range(min(64, len(valid_ds)))
    samples = Samples(
        inputs=torch.stack([valid_ds[i][0] for i in held_out]).numpy(),
        targets=np.array([valid_ds[i][1] for i in held_out]),
        calibration=calibration_inputs(ClipDataset(train.waves, train.targets, features, None), args.seed),
    )
    return net, metrics, train.skipped + valid.skipped, samples


CALIBRATION_CLIPS = 200  # INT8 calibration: NNCF's default subset is 300; 32 sufficed for ResNet-18 here


@dataclass(frozen=True)
class Samples:
    inputs: np.ndarray  # held-out model inputs (n, 1, n_mels, frames)
    targets: np.ndarray  # their classes (n,)
    calibration: np.ndarray  # training model inputs for INT8 calibration


def calibration_inputs(dataset: ClipDataset, seed: int) -> np.ndarray:
    """Model inputs of up to CALIBRATION_CLIPS training clips drawn evenly at random."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(dataset))[:CALIBRATION_CLIPS])
    return np.stack([dataset[i][0].numpy() for i in chosen])


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


def library_versions() -> dict[str, str]:
    pkgs = ("torch", "torchaudio", "torchvision", "fastai", "bentoml", "soundfile")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    settings = FeatureSettings()
    ds = load_dataset(args.dataset, args.data_dir, seed=args.seed, clips_per_class=args.clips_per_class)
    log.info("%s: %d clips, %d classes, folds %s", ds.name, len(ds.clips), len(ds.labels), ds.folds)

    if args.cv:
        results = {}
        for fold in ds.folds:
            _, metrics, _, _ = train_fold(args, ds, settings, fold)
            results[fold] = metrics
            log.info("fold %d\n%s", fold, format_report(metrics))
        acc = np.array([m["accuracy"] for m in results.values()])
        f1 = np.array([m["macro_f1"] for m in results.values()])
        print(f"cross-validation over {len(acc)} folds: accuracy {acc.mean():.4f} ± {acc.std():.4f}, "
              f"macro-F1 {f1.mean():.4f} ± {f1.std():.4f}")
        return 0

    started = time.time()
    net, metrics, skipped, samples = train_fold(args, ds, settings, args.valid_fold)
    print(format_report(metrics))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s); see the log above")
    if not args.save:
        return 0

    def reports(folder: Path) -> None:
        write_json(folder / METRICS_FILE, {**metrics, "skipped_files": skipped})
        plot_confusion(metrics, ds.labels, folder / "confusion_matrix.png")

    train_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if v is not None}
    tag = save_model(
        net,
        arch=args.arch,
        labels=ds.labels,
        settings=settings,
        metadata={
            "dataset": ds.name,
            "dataset_fingerprint": ds.fingerprint(),
            "n_clips": len(ds.clips),
            "valid_fold": args.valid_fold,
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "n_valid")},
            "per_class_recall": {lab: m["recall"] for lab, m in metrics["per_class"].items()},
            "skipped_files": len(skipped),
            "train_args": json.loads(json.dumps(train_args)),
            "train_seconds": round(time.time() - started, 1),
            "versions": library_versions(),
        },
        samples=samples.inputs,
        sample_targets=samples.targets,
        calibration=samples.calibration,
        extra_files=reports,
    )
    print(f"saved {tag}")
    print(f"engines: {summary(bentoml.models.get(tag).info.metadata['engines'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
