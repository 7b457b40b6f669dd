"""Short spoken-word-like clips, synthesised offline: a short-clip data set and speech-like sound.

    python -m training.words data/words --clips-per-class 50 --seed 0     # DIR/<word>/<k>.wav

Ten "words", each a fixed sequence of vowels and consonants made by a crude source-filter
synthesiser (a glottal pulse train through three formant resonators; fricatives and bursts as
filtered noise). Every clip draws its own speaker (pitch 85-260 Hz, vocal-tract scale 0.85-1.2),
tempo, intonation, gain and background noise, so a word is a pattern in time and frequency, not
one statistic. Clips last 0.25-0.95 s at 8 kHz (telephone rate), as WAV in the folder layout:
the short-clip case the window choice in training.train exists for. `babble` makes longer
speech-like sound for the out-of-set checks (training.outofset).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter

SAMPLE_RATE = 8000

VOWELS = {  # (F1, F2, F3) in Hz, an adult male voice; scaled per speaker
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
CONSONANTS = {  # (kind, low Hz, high Hz) of the noise
    "s": ("fricative", 2500, 3900),
    "sh": ("fricative", 1600, 3200),
    "f": ("fricative", 1000, 3900),
    "t": ("burst", 2000, 3900),
    "k": ("burst", 1000, 2500),
}
WORDS = {
    "a": ["a"],
    "i": ["i"],
    "ua": ["u", "a"],
    "ai": ["a", "i"],
    "sa": ["s", "a"],
    "shi": ["sh", "i"],
    "ta": ["t", "a"],
    "ko": ["k", "o"],
    "asa": ["a", "s", "a"],
    "ife": ["i", "f", "e"],
}

log = logging.getLogger(__name__)
Rng = np.random.Generator


def _resonate(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    """Second-order resonator (a formant) with unit gain at its centre."""
    r = np.exp(-np.pi * bandwidth / rate)
    theta = 2 * np.pi * freq / rate
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1 - r], a, x)


def _vowel(rng: Rng, n: int, rate: int, f0: np.ndarray, formants: tuple[float, ...], scale: float) -> np.ndarray:
    phase = np.cumsum(f0 / rate)
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = lfilter([1.0], [1.0, -0.95], source)  # spectral tilt of the glottal pulse
    out = sum(_resonate(source, min(f * scale, rate * 0.45), 60 + 0.06 * f, rate) / (k + 1)
              for k, f in enumerate(formants))  # fmt: skip
    return out * np.hanning(n) ** 0.3 if n > 2 else out


def _consonant(rng: Rng, n: int, rate: int, kind: str, lo: float, hi: float) -> np.ndarray:
    b, a = butter(2, [lo / (rate / 2), min(hi, rate * 0.49) / (rate / 2)], btype="band")
    noise = lfilter(b, a, rng.standard_normal(n))
    if kind == "burst":
        env = np.exp(-np.arange(n) / (0.012 * rate))
        return 0.9 * noise * env
    return 0.35 * noise * np.hanning(n)


def say(rng: Rng, phones: list[str], rate: int = SAMPLE_RATE, *, f0: float | None = None,
        scale: float | None = None, tempo: float | None = None) -> np.ndarray:  # fmt: skip
    """One utterance of `phones` by a random speaker, normalised to peak 1."""
    f0 = rng.uniform(85, 260) if f0 is None else f0
    scale = rng.uniform(0.85, 1.2) if scale is None else scale
    tempo = rng.uniform(0.8, 1.25) if tempo is None else tempo
    parts = []
    for p in phones:
        if p in VOWELS:
            n = int(rng.uniform(0.14, 0.24) / tempo * rate)
            contour = f0 * np.linspace(1 + rng.uniform(-0.1, 0.15), 1 + rng.uniform(-0.2, 0.05), n)
            parts.append(_vowel(rng, n, rate, contour, VOWELS[p], scale))
        else:
            kind, lo, hi = CONSONANTS[p]
            n = int((rng.uniform(0.08, 0.14) if kind == "fricative" else rng.uniform(0.03, 0.05)) / tempo * rate)
            parts.append(_consonant(rng, n, rate, kind, lo * scale, hi))
        parts.append(np.zeros(int(rng.uniform(0.0, 0.02) * rate)))
    x = np.concatenate(parts)
    return x / (np.abs(x).max() + 1e-9)


def word_clip(rng: Rng, word: str) -> np.ndarray:
    """A clip of 0.25-0.95 s: the word at a random onset in low background noise, at a random gain."""
    speech = say(rng, WORDS[word])
    lead = int(rng.uniform(0.02, 0.15) * SAMPLE_RATE)
    tail = int(rng.uniform(0.02, 0.15) * SAMPLE_RATE)
    n = min(int(0.95 * SAMPLE_RATE), max(int(0.25 * SAMPLE_RATE), lead + len(speech) + tail))
    x = np.zeros(n)
    seg = speech[: n - lead]
    x[lead : lead + len(seg)] = seg
    x += rng.standard_normal(n) * 10 ** (-rng.uniform(25, 45) / 20)
    return x * 10 ** (rng.uniform(-20, -3) / 20) / (np.abs(x).max() + 1e-9)


def babble(rng: Rng, seconds: float, rate: int) -> np.ndarray:
    """Speech-like sound: random syllables by one speaker with pauses, `seconds` long, peak ~1."""
    n = int(seconds * rate)
    f0, scale = rng.uniform(85, 260), rng.uniform(0.85, 1.2)
    parts, total = [], 0
    vowels, consonants = list(VOWELS), list(CONSONANTS)
    while total < n:
        syllable = ([str(rng.choice(consonants))] if rng.random() < 0.6 else []) + [str(rng.choice(vowels))]
        s = say(rng, syllable, rate, f0=f0 * rng.uniform(0.85, 1.15), scale=scale, tempo=rng.uniform(0.9, 1.3))
        gap = np.zeros(int(rng.uniform(0.02, 0.3 if rng.random() < 0.8 else 0.6) * rate))
        parts += [s, gap]
        total += len(s) + len(gap)
    return np.concatenate(parts)[:n]


def generate(out_dir: Path, clips_per_class: int = 50, seed: int = 0) -> Path:
    """Write DIR/<word>/<word>_<k>.wav (16-bit PCM at 8 kHz) for every word; returns DIR."""
    rng = np.random.default_rng(seed)
    for word in WORDS:
        (out_dir / word).mkdir(parents=True, exist_ok=True)
        for k in range(clips_per_class):
            sf.write(out_dir / word / f"{word}_{k:03d}.wav", word_clip(rng, word), SAMPLE_RATE, subtype="PCM_16")
    log.info("wrote %d clips of %d words to %s", clips_per_class * len(WORDS), len(WORDS), out_dir)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m training.words", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("out_dir", type=Path, help="directory to write the folder data set into")
    p.add_argument("--clips-per-class", type=int, default=50, help="clips per word (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(a.out_dir, a.clips_per_class, a.seed)


if __name__ == "__main__":
    main()
