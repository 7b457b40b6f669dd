"""The leakage check: clips on both sides of a split that are the same sound, found before training.

Grouping (training/datasets.py) keeps the clips of one recording on one side, as far as names and
metadata tell. This check looks at the audio itself, for what they do not tell: a file copied under
another name, the same recording uploaded twice (ESC-10 ships one: 2-28314-A and 2-30322-A, the
author's FireBurning.wav and FireBurning_v2.wav, correlate at 0.96), a clip re-encoded or trimmed.

It finds copies, not recordings: cuts of one recording are different stretches of one place, and
most are further apart than copies (the shipped clips dealt file by file, as the folder loader
used to: of the 32 pairs of clips of one recording across held-out fold 1, it named 2). Grouping
by name and metadata is what keeps recordings apart; this check catches what slips past it.

Pairs are "across the split" when their clips lie in different folds and one of those folds is held
out by this run (the valid fold; every fold with --cv), so each pair would sit on both sides of some
evaluation. Between such pairs:

    identical audio   the same decoded samples (sha256 of the float32 waveform at the model's rate):
                      refused with a DatasetError that names the files. A copy on both sides turns
                      a held-out clip into a training clip, and there is no judgement to make.
    near-duplicates   log-mel fingerprints within NEAR_DB: a warning naming the files, and a count
                      in the model's metadata (`leakage`). A fingerprint cannot tell a re-encoded copy
                      from two recordings of one steady sound in one place with certainty, so it
                      informs and does not refuse; the fix, if they are one recording, is to group
                      them (a subfolder, --group-pattern).

The fingerprint of a clip, any length: its mel power spectrogram (the model's own settings) in dB,
only the frames within ACTIVE_DB of the loudest one (leading or trailing silence and padding do not
count), floored FLOOR_DB below the loudest bin (the quiet bands a lossy codec cuts do not count);
then per mel band the mean over time, less its mean over bands (recording gain does not count), and
the spread over time. Two clips' distance is the root mean square of the difference, in dB.

How NEAR_DB was chosen, on the 320 shipped ESC-10 clips (`python -m training.leakage --altered 8`,
which also checks any data set without training): the closest pair of clips from different
recordings that are not the same audio is 0.81 dB apart (two fires), the known duplicate above
0.50; copies of 40 clips made unlike the original are this far from it (median, share within
0.75 dB): gain x0.3 0.00 (40/40), 0.3 s trimmed 0.15 (40/40), 0.2 s of silence before it 0.21
(39/40), MP3 0.27 (33/40), Vorbis 0.45 (34/40). Lossy copies are the ones it misses most.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundclassifier.features import Features
from training.datasets import Clip, DatasetError, Decoded

log = logging.getLogger(__name__)

NEAR_DB = 0.75  # fingerprints closer than this (dB, RMS) are near-duplicates
ACTIVE_DB = 40.0  # frames whose loudest band is this far below the clip's loudest bin are left out
FLOOR_DB = 50.0  # bands are floored this far below the clip's loudest bin
SHOWN = 20  # pairs named in the log and the metadata


def fingerprint(wave: np.ndarray, features: Features) -> np.ndarray:
    """The clip's fingerprint (module docstring): float32 (2 * n_mels,)."""
    db = 10 * np.log10(np.maximum(features.mel_power(wave), 1e-10))
    top = db.max()
    db = np.maximum(db[:, db.max(axis=0) >= top - ACTIVE_DB], top - FLOOR_DB)
    mean = db.mean(axis=1)
    return np.concatenate([mean - mean.mean(), db.std(axis=1)]).astype(np.float32)


@dataclass(frozen=True)
class Pair:
    a: Clip
    b: Clip
    distance_db: float  # 0 for identical audio


def straddles(fold_a: int, fold_b: int, held_out: list[int]) -> bool:
    """Whether two clips of these folds lie on both sides of one of the evaluations."""
    return fold_a != fold_b and (fold_a in held_out or fold_b in held_out)


def find(data: Decoded, features: Features, held_out: list[int]) -> tuple[list[Pair], list[Pair]]:
    """(identical, near-duplicate) pairs across the split, each list closest first."""
    folds = np.array([c.fold for c in data.clips])
    held = np.isin(folds, held_out)
    identical, same = [], {}
    for i, wave in enumerate(data.waves):
        same.setdefault(hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).digest(), []).append(i)
    copies = set()
    for members in same.values():
        for k, i in enumerate(members):
            for j in members[k + 1 :]:
                copies.add((i, j))
                if straddles(folds[i], folds[j], held_out):
                    identical.append(Pair(data.clips[i], data.clips[j], 0.0))
    prints = np.stack([fingerprint(w, features) for w in data.waves]).astype(np.float64)
    sq = (prints**2).sum(axis=1)
    near = []
    for start in range(0, len(prints), 512):  # (512, n) distances at a time: ESC-50 and UrbanSound8K fit
        rows = slice(start, min(start + 512, len(prints)))
        d2 = (sq[rows, None] + sq[None, :] - 2 * prints[rows] @ prints.T) / prints.shape[1]
        across = (folds[rows, None] != folds[None, :]) & (held[rows, None] | held[None, :])
        across &= np.arange(rows.start, rows.stop)[:, None] < np.arange(len(prints))[None, :]  # each pair once
        for i, j in zip(*np.nonzero(across & (d2 < NEAR_DB**2)), strict=True):
            i += rows.start
            if (i, j) not in copies:
                near.append(Pair(data.clips[i], data.clips[j], float(np.sqrt(max(d2[i - rows.start, j], 0.0)))))
    near.sort(key=lambda p: p.distance_db)
    return identical, near


def check(data: Decoded, features: Features, held_out: list[int], root: Path) -> dict:
    """Find the pairs, log the near-duplicates with their file names and return the metadata's
    `leakage`; raise DatasetError naming the files when identical audio lies across the split."""
    identical, near = find(data, features, held_out)

    def name(c: Clip) -> str:
        shown = c.path.relative_to(root) if c.path.is_relative_to(root) else c.path
        return f"{shown} (fold {c.fold})"

    if identical:
        shown = "; ".join(f"{name(p.a)} = {name(p.b)}" for p in identical[:5])
        raise DatasetError(f"{len(identical)} pair(s) of files with identical audio on both sides of the split: {shown}"
                           + (" ..." if len(identical) > 5 else "")
                           + ". Remove one of each, or make them one recording (a subfolder, --group-pattern)")  # fmt: skip
    if near:
        log.warning("leakage check: %d pair(s) of near-duplicate clips on both sides of the split (log-mel fingerprints "
                    "within %.2f dB; if each pair is one recording, group it: a subfolder, --group-pattern):",
                    len(near), NEAR_DB)  # fmt: skip
        for p in near[:SHOWN]:
            log.warning("  %s ~ %s: %.2f dB", name(p.a), name(p.b), p.distance_db)
    else:
        log.info("leakage check: no identical or near-duplicate clips on both sides of the split")
    return {
        "identical": 0,
        "near_duplicates": len(near),
        "pairs": [[name(p.a), name(p.b), round(p.distance_db, 3)] for p in near[:SHOWN]],
        "rule": f"clips in different folds, one of them held out: identical decoded audio refuses the split; log-mel "
        f"fingerprints within {NEAR_DB} dB (training/leakage.py) are counted and named here, not refused",
    }


def main(argv: list[str] | None = None) -> int:
    """Check a data set without training: its recordings, the pairs the check finds across the
    cross-validation folds, the closest clips of different recordings whatever their folds, and with
    --altered N how far altered copies of every Nth clip land from it (how NEAR_DB was chosen)."""
    import argparse
    import io

    import soundfile as sf

    from soundclassifier.features import FeatureSettings
    from training.datasets import DATASETS, SHIPPED_ESC10, decode_clips, load_dataset

    p = argparse.ArgumentParser(prog="python -m training.leakage", description=main.__doc__)
    p.add_argument("--dataset", choices=DATASETS, default="esc10", help="data set layout (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=SHIPPED_ESC10, help="its root (default: the shipped data/esc10)")
    p.add_argument("--group-pattern", metavar="REGEX", help="folder only: as training.train's --group-pattern")
    p.add_argument("--seed", type=int, default=0, help="the folder's deal into folds, as training.train's (default %(default)s)")
    p.add_argument("--closest", type=int, default=5, help="closest pairs of different recordings to show (default %(default)s)")
    p.add_argument("--altered", type=int, default=0, metavar="N", help="also alter every Nth clip (gain, trim, padding, Vorbis, MP3) and measure")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ds = load_dataset(a.dataset, a.data_dir, seed=a.seed, group_pattern=a.group_pattern)
    print(f"{ds.name}: {len(ds.clips)} clips, {ds.groups()}")
    features = Features(FeatureSettings())
    data = decode_clips(ds.clips, ds.labels, features)
    report = check(data, features, ds.folds, ds.root)
    print(f"across the cross-validation folds: {report['near_duplicates']} near-duplicate pair(s)")
    prints = np.stack([fingerprint(w, features) for w in data.waves])
    recordings = np.array([c.recording for c in data.clips])
    d = np.sqrt(((prints[:, None] - prints[None]) ** 2).mean(axis=-1))
    d[recordings[:, None] == recordings[None]] = np.inf
    i, j = np.triu_indices(len(d), 1)
    for k in np.argsort(d[i, j])[: a.closest]:
        x, y = data.clips[i[k]], data.clips[j[k]]
        print(f"  closest different recordings: {x.path.name} (fold {x.fold}) ~ {y.path.name} (fold {y.fold}): {d[i[k], j[k]]:.2f} dB")
    if a.altered:
        rate = features.settings.sample_rate

        def codec(w: np.ndarray, fmt: str, subtype: str | None) -> np.ndarray:
            buf = io.BytesIO()
            sf.write(buf, w, rate, format=fmt, subtype=subtype)
            return sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0][: len(w)]

        alter = {"gain x0.3": lambda w: 0.3 * w, "0.3 s trimmed": lambda w: w[int(0.3 * rate) :],
                 "0.2 s of silence before": lambda w: np.concatenate([np.zeros(int(0.2 * rate), np.float32), w]),
                 "Vorbis": lambda w: codec(w, "OGG", "VORBIS"), "MP3": lambda w: codec(w, "MP3", None)}  # fmt: skip
        chosen = range(0, len(data.waves), a.altered)
        for name, f in alter.items():
            far = np.array([np.sqrt(np.mean((fingerprint(f(data.waves[k]), features) - prints[k]) ** 2)) for k in chosen])
            print(f"  {name}: median {np.median(far):.2f} dB, max {far.max():.2f}, within {NEAR_DB}: {(far < NEAR_DB).sum()}/{len(far)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
