"""Sounds from none of the classes, made offline: how often does the model say "unknown" to them?

Kinds (each clip draws its own level, pitch, timing):
    silence        digital zeros, or hiss 60-80 dB below full scale
    noise          white, pink or brown noise
    tones          a steady sine, a chord, or a slow sweep
    speech         speech-like babble (training.words: formant-synthesised syllables)
    music          melodies of plucked harmonic notes
    synthetic:<c>  classes of the project's synthetic set (siren, car horn, drilling, ...) whose
                   name is not a label of the model

The unknown rate by the stored rule goes into the model's metadata; nothing is tuned to
it. With --outliers, training also sees clips of some kinds (OUTLIER_KINDS, another seed) with a
uniform target (outlier exposure), and never speech or music, so the rates on those two kinds say
whether what it learned carries over to sounds it was not shown. All of them are crude stand-ins
for real out-of-set sound, and what they teach does not carry over to it (docs/training-recipe.md);
real recordings of other kinds, where a user has them, go in with train.py's --outlier-dir.
"""

from __future__ import annotations

import numpy as np
import soxr

from training import synthetic
from training.words import babble

Rng = np.random.Generator

# The check's sounds are the same whatever seed the network trained with, so runs of different
# seeds are judged on the same clips (and their logits can be averaged clip by clip).
CHECK_SEED = 0


def _noise(rng: Rng, n: int) -> np.ndarray:
    white = rng.standard_normal(n)
    colour = rng.choice(["white", "pink", "brown"])
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spectrum /= np.sqrt(f) if colour == "pink" else f
    return np.fft.irfft(spectrum, n)


def _tones(rng: Rng, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    kind = rng.choice(["sine", "chord", "sweep"])
    if kind == "sine":
        return np.sin(2 * np.pi * rng.uniform(80, 5000) * t)
    if kind == "chord":
        root = rng.uniform(100, 800)
        return sum(np.sin(2 * np.pi * root * r * t) for r in (1, 1.26, 1.5))
    lo, hi = sorted(rng.uniform(100, 6000, 2))
    return np.sin(2 * np.pi * np.cumsum(np.geomspace(lo, hi, n)) / rate)


def _music(rng: Rng, n: int, rate: int) -> np.ndarray:
    out = np.zeros(n)
    beat = int(rng.uniform(0.15, 0.5) * rate)
    scale = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12) * rng.choice([0.5, 1, 2])
    for start in range(0, n, beat):
        f = rng.choice(scale)
        m = min(n - start, 3 * beat)
        t = np.arange(m) / rate
        note = sum(np.sin(2 * np.pi * f * h * t) / h**1.5 for h in range(1, 7))
        out[start : start + m] += note * np.exp(-t / rng.uniform(0.1, 0.6))
    return out


def _loudest(wave: np.ndarray, n: int) -> np.ndarray:
    """The n samples of `wave` with the most energy (the event, not the silence around it)."""
    if len(wave) <= n:
        return np.pad(wave, (0, n - len(wave)))
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(wave, np.float64) ** 2)])
    start = int(np.argmax(energy[n:] - energy[:-n]))
    return wave[start : start + n]


KINDS = ("silence", "noise", "tones", "speech", "music", "synthetic")
OUTLIER_KINDS = ("silence", "noise", "tones", "synthetic")  # shown in training with --outliers


def clips(
    labels: list[str], seconds: float, rate: int, per_kind: int = 12, seed: int = CHECK_SEED, kinds: tuple[str, ...] = KINDS
) -> list[tuple[str, np.ndarray]]:
    """(kind, mono float32 waveform at `rate`) pairs, `seconds` long, peaks between -30 and -1 dBFS."""
    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * rate))
    own = {lab.lower() for lab in labels}
    made: list[tuple[str, np.ndarray]] = []
    for k in range(per_kind):
        if "silence" in kinds:
            hiss = rng.standard_normal(n) * 10 ** (-rng.uniform(60, 80) / 20)
            made.append(("silence", np.zeros(n) if k % 2 == 0 else hiss))
        if "noise" in kinds:
            made.append(("noise", _noise(rng, n)))
        if "tones" in kinds:
            made.append(("tones", _tones(rng, n, rate)))
        if "speech" in kinds:
            made.append(("speech", babble(rng, seconds, rate)))
        if "music" in kinds:
            made.append(("music", _music(rng, n, rate)))
    others = [c for c in synthetic.CLASSES if c.lower() not in own] if "synthetic" in kinds else []
    for k in range(per_kind if others else 0):
        c = others[k % len(others)]
        wave = soxr.resample(synthetic.make_clip(c, rng), synthetic.SAMPLE_RATE, rate)
        made.append((f"synthetic:{c}", _loudest(wave, n)))
    out = []
    for kind, wave in made:
        peak = np.abs(wave).max()
        if kind != "silence" and peak > 0:
            wave = wave / peak * 10 ** (-rng.uniform(1, 30) / 20)
        out.append((kind, np.asarray(wave, np.float32)))
    return out
