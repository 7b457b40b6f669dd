"""Random crops in training, averaged over crops at test time (docs/training-recipe.md, CV table).

    OMP_NUM_THREADS=1 python -m experiments.crops_tta --cv --no-save --clip-seconds 2.5 [--seed 1]

`--clip-seconds` shorter than the clips makes training take a random window of each clip (the
augmentation's crop). This wrapper then scores each held-out clip three ways and prints them per
fold and as a mean over folds: the loudest window alone (what /classify serves), and the mean of
the softmax, or of the logits, over windows at hop window/2 and window/4 covering the whole clip.
The CV line training prints is the window/2 softmax mean. Serving was not changed for it: the
averaging did not pay. Prints to stdout; docs/training-recipe.md's CV table records the figures.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.special import softmax

import training.train as train
from training.augment import ClipDataset

_predict = train.predict_logits
_rows: list[dict] = []


def windows(wave: np.ndarray, n: int, hop: int) -> list[np.ndarray]:
    if len(wave) <= n:
        return [np.pad(wave, (0, n - len(wave)))]
    starts = list(range(0, len(wave) - n + 1, hop))
    if starts[-1] != len(wave) - n:
        starts.append(len(wave) - n)
    return [wave[s : s + n] for s in starts]


def predict_held_out(net: torch.nn.Module, ds, batch_size: int = 32) -> np.ndarray:
    # training.train also predicts the generated out-of-set clips: one window each, left alone
    if not isinstance(ds, ClipDataset) or ds.augment is not None or not ds.targets or len(set(ds.targets)) < 2:
        return _predict(net, ds, batch_size)
    features, n = ds.features, ds.features.settings.clip_samples
    y = np.asarray(ds.targets)
    row = {"loudest": float((_predict(net, ds, batch_size).argmax(1) == y).mean())}
    kept = None
    for name, hop in (("half", n // 2), ("quarter", n // 4)):
        probs, logits = [], []
        for wave in ds.waves:
            x = torch.from_numpy(np.stack([features.spectrogram(w) for w in windows(wave, n, hop)]))
            with torch.no_grad():
                z = net(x).float().numpy()
            probs.append(softmax(z, axis=1).mean(0))
            logits.append(z.mean(0))
        row[f"{name}_probs"] = float((np.argmax(probs, 1) == y).mean())
        row[f"{name}_logits"] = float((np.argmax(logits, 1) == y).mean())
        if kept is None:
            kept = np.log(np.asarray(probs) + 1e-12).astype(np.float32)
    _rows.append(row)
    print(f"fold {len(_rows)}: {row}", flush=True)
    return kept


if __name__ == "__main__":
    train.predict_logits = predict_held_out
    code = train.main(sys.argv[1:])
    for key in _rows[0]:
        v = np.array([r[key] for r in _rows])
        print(f"{key}: {v.mean():.4f} ± {v.std():.4f}  folds {' / '.join(f'{a:.4f}' for a in v)}")
    sys.exit(code)
