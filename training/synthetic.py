"""A synthetic environmental-sound data set, generated offline and deterministically from a seed.

    python -m training.synthetic data/synthetic --clips-per-class 40 --seed 0

Ten classes of procedurally synthesised sounds. Every clip draws its own pitch, rate, duration,
onset and gain, and is mixed into coloured background noise at a random SNR, so classes overlap
in loudness and timing and the task is not separable by a single statistic. Files are written in
the ESC-50 layout (audio/*.wav plus meta/esc50.csv with a fold column), so they flow through the
very loader used for ESC-50.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 22050
CLIP_SECONDS = 5.0
FOLDS = 5

log = logging.getLogger(__name__)
Rng = np.random.Generator


def _t(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _env(n: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, exponential release envelope of n samples."""
    t = _t(n)
    return np.minimum(1.0, t / max(attack, 1e-3)) * np.exp(-t / max(release, 1e-3))


def _lowpass(x: np.ndarray, alpha: float) -> np.ndarray:
    """One-pole low-pass; alpha in (0, 1], smaller is darker."""
    from scipy.signal import lfilter

    return lfilter([alpha], [1, alpha - 1], x)


def siren(rng: Rng, n: int) -> np.ndarray:
    lo, hi = rng.uniform(500, 900), rng.uniform(1200, 1900)
    rate = rng.uniform(0.3, 2.5)
    freq = lo + (hi - lo) * 0.5 * (1 + np.sin(2 * np.pi * rate * _t(n) + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


def car_horn(rng: Rng, n: int) -> np.ndarray:
    f = rng.uniform(300, 500)
    ratio = rng.choice([1.25, 1.26, 1.33])
    t = _t(n)
    tone = sum(np.sign(np.sin(2 * np.pi * f * r * k * t)) / k for r in (1, ratio) for k in (1, 2, 3))
    gate = np.ones(n)
    if rng.random() < 0.5:  # honk-honk
        gate[int(n * rng.uniform(0.35, 0.45)) : int(n * rng.uniform(0.5, 0.6))] = 0
    return tone * gate


def dog_bark(rng: Rng, n: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(rng.integers(1, 5)):
        m = int(SAMPLE_RATE * rng.uniform(0.12, 0.3))
        start = rng.integers(0, max(1, n - m))
        f0 = rng.uniform(250, 600)
        t = _t(m)
        f = f0 * (1 + 0.4 * np.exp(-t * 12))
        ph = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        voice = sum(np.sin(k * ph) / k for k in range(1, 7)) + 0.5 * rng.standard_normal(m)
        out[start : start + m] += voice * _env(m, 0.01, rng.uniform(0.05, 0.12))
    return out


def drilling(rng: Rng, n: int) -> np.ndarray:
    f = rng.uniform(1500, 3500)
    t = _t(n)
    buzz = np.sign(np.sin(2 * np.pi * f * t)) + 0.3 * rng.standard_normal(n)
    return buzz * (0.8 + 0.2 * np.sin(2 * np.pi * rng.uniform(3, 9) * t))


def engine_idle(rng: Rng, n: int) -> np.ndarray:
    fire = rng.uniform(15, 45)
    t = _t(n)
    pulses = np.maximum(0, np.sin(2 * np.pi * fire * t)) ** 6
    rumble = _lowpass(rng.standard_normal(n), 0.02) * 4
    return _lowpass(pulses * (1 + rumble), 0.1) * 3 + rumble


def jackhammer(rng: Rng, n: int) -> np.ndarray:
    rate = rng.uniform(10, 22)
    t = _t(n)
    hits = (np.sin(2 * np.pi * rate * t) > 0.85).astype(float)
    return hits * rng.standard_normal(n) + 0.4 * hits * np.sin(2 * np.pi * rng.uniform(120, 300) * t)


def rain(rng: Rng, n: int) -> np.ndarray:
    hiss = _lowpass(rng.standard_normal(n), rng.uniform(0.3, 0.8))
    drops = np.zeros(n)
    idx = rng.integers(0, n, size=int(rng.uniform(80, 400) * n / SAMPLE_RATE))
    drops[idx] = rng.uniform(2, 6, size=idx.size)
    return hiss + _lowpass(drops, 0.5)


def clock_tick(rng: Rng, n: int) -> np.ndarray:
    """Regular tick-tock: a broadband click plus a short low resonance, every `period` seconds."""
    period = rng.uniform(0.25, 1.0)
    f = rng.uniform(700, 2000)
    out = np.zeros(n)
    m = int(SAMPLE_RATE * 0.03)
    t = _t(m)
    click = rng.standard_normal(m) * np.exp(-t / 0.001) + np.sin(2 * np.pi * f * t) * np.exp(-t / 0.008)
    for k, start in enumerate(np.arange(rng.uniform(0, period), n / SAMPLE_RATE, period)):
        s = int(start * SAMPLE_RATE)
        out[s : s + m] += click[: n - s] * (1.0 if k % 2 else 0.6)
    return out


def church_bell(rng: Rng, n: int) -> np.ndarray:
    f = rng.uniform(200, 700)
    t = _t(n)
    partials = (0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 2.662)
    decay = rng.uniform(0.8, 2.5)
    return sum(np.sin(2 * np.pi * f * p * t) * np.exp(-t * p / decay) for p in partials)


def bird_chirp(rng: Rng, n: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(rng.integers(3, 12)):
        m = int(SAMPLE_RATE * rng.uniform(0.04, 0.15))
        start = rng.integers(0, max(1, n - m))
        f0, f1 = rng.uniform(2500, 4500), rng.uniform(4500, 8000)
        if rng.random() < 0.5:
            f0, f1 = f1, f0
        f = np.linspace(f0, f1, m)
        out[start : start + m] += np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.hanning(m)
    return out


CLASSES: dict[str, Callable[[Rng, int], np.ndarray]] = {
    "siren": siren,
    "car_horn": car_horn,
    "dog_bark": dog_bark,
    "drilling": drilling,
    "engine_idle": engine_idle,
    "jackhammer": jackhammer,
    "rain": rain,
    "clock_tick": clock_tick,
    "church_bell": church_bell,
    "bird_chirp": bird_chirp,
}


def background(rng: Rng, n: int) -> np.ndarray:
    """Coloured noise between white and brown, as a stand-in for street or room tone."""
    white = rng.standard_normal(n)
    return _lowpass(white, rng.uniform(0.02, 1.0))


def make_clip(label: str, rng: Rng) -> np.ndarray:
    """One 5-second clip of `label` at SAMPLE_RATE, float32 in [-1, 1]."""
    total = int(SAMPLE_RATE * CLIP_SECONDS)
    dur = int(total * rng.uniform(0.4, 1.0))
    onset = rng.integers(0, total - dur + 1)
    event = CLASSES[label](rng, dur)
    event = event * _env(dur, rng.uniform(0.005, 0.1), rng.uniform(1.0, 8.0))
    clip = np.zeros(total)
    clip[onset : onset + dur] = event / (np.sqrt(np.mean(event**2)) + 1e-9)
    noise = background(rng, total)
    snr_db = rng.uniform(3, 25)
    event_power = np.mean(clip[onset : onset + dur] ** 2)
    noise *= np.sqrt(event_power / (10 ** (snr_db / 10)) / (np.mean(noise**2) + 1e-12))
    mix = clip + noise
    gain = 10 ** (rng.uniform(-30, -1) / 20)
    return (mix / (np.abs(mix).max() + 1e-9) * gain).astype(np.float32)


def generate(out_dir: Path, clips_per_class: int = 40, seed: int = 0) -> Path:
    """Write the data set in the ESC-50 layout under `out_dir` and return it."""
    audio_dir, meta_dir = out_dir / "audio", out_dir / "meta"
    audio_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for target, label in enumerate(CLASSES):
        for i in range(clips_per_class):
            rng = np.random.default_rng([seed, target, i])
            fold = i % FOLDS + 1
            name = f"{fold}-{target:02d}{i:04d}-A-{target}.wav"
            sf.write(audio_dir / name, make_clip(label, rng), SAMPLE_RATE, subtype="PCM_16")
            rows.append([name, fold, target, label, False, f"{target:02d}{i:04d}", "A"])
    tmp = meta_dir / "esc50.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    tmp.replace(meta_dir / "esc50.csv")  # the CSV appears last: its presence means "complete"
    log.info("wrote %d clips of %d classes to %s", len(rows), len(CLASSES), out_dir)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="where to write audio/ and meta/esc50.csv")
    p.add_argument("--clips-per-class", type=int, default=40, help="clips per class (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(a.out_dir, a.clips_per_class, a.seed)


if __name__ == "__main__":
    main()
