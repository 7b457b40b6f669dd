"""Audio -> the model's input: the one implementation shared by training, serving and batch jobs.

`FeatureSettings` is the single source of truth for the spectrogram. Training stores it in the model's
metadata (`settings.model_dump()`); serving rebuilds it with `FeatureSettings.from_metadata(...)`, so
the two paths cannot drift.

Pipeline for one clip (`Features.__call__`), numpy and libsoxr only (no PyTorch: the served process
does not load it):
    samples (channels, frames) at any rate
      -> mono (mean of channels)
      -> resample to `sample_rate` (libsoxr's high-quality filter, as librosa does by default)
      -> fixed window of `clip_seconds` (see `fit_window` for the pad / crop policy)
      -> mel power spectrogram, as torchaudio.transforms.MelSpectrogram(power=2, center=True)
         computes it (reflect-padded centred STFT, periodic window, torchaudio's filterbank)
      -> dB (ref 1.0), floored at `top_db` below the clip's own peak
      -> per-clip standardisation (zero mean, unit variance)
    output: float32 ndarray of shape (1, n_mels, frames), frames = clip_samples // hop_length + 1.

Everything is computed per clip, so a clip's features never depend on what else is in a batch.
The torchaudio pipeline this replaced is kept in tests/test_features.py as the reference; the two
agree to float rounding (the test states the tolerance).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from fractions import Fraction
from typing import Literal

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field, model_validator

from soundclassifier.audio import Audio
from soundclassifier.hardware import single_threaded_blas


class FeatureSettings(BaseModel):
    """Log-mel spectrogram settings, named as in torchaudio.transforms.MelSpectrogram.

    Defaults suit 5-second environmental clips (ESC-50, UrbanSound8K): 22.05 kHz keeps everything up
    to 11 kHz, where almost all of their energy lies, at half the cost of 44.1 kHz; 128 mel bands of
    46 ms windows with 23 ms hops give a 128 x 216 image per clip.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(22050, gt=0, description="Rate (Hz) every clip is resampled to.")
    clip_seconds: float = Field(5.0, gt=0, description="Length (s) of the window the model sees.")
    n_fft: int = Field(1024, gt=0, description="Size of the FFT.")
    win_length: int = Field(1024, gt=0, description="Window size (samples); <= n_fft.")
    hop_length: int = Field(512, gt=0, description="Samples between successive frames.")
    window: Literal["hann", "hamming"] = Field("hann", description="Window function of the STFT.")
    n_mels: int = Field(128, gt=0, description="Number of mel filterbanks.")
    f_min: float = Field(20.0, ge=0, description="Lowest frequency (Hz) of the mel filterbank.")
    f_max: float = Field(11025.0, gt=0, description="Highest frequency (Hz); <= sample_rate / 2.")
    mel_scale: Literal["htk", "slaney"] = Field("slaney", description="Mel scale formula.")
    top_db: float = Field(80.0, gt=0, description="dB range kept below each clip's peak.")
    resampler: Literal["soxr_hq", "torchaudio_sinc"] = Field(
        "soxr_hq",
        description="How clips at other rates reach `sample_rate`: libsoxr's high-quality filter (librosa's "
        "default; 0.5 ms for 5 s at 44.1 kHz here) or torchaudio's windowed sinc (1.5 ms; the only choice "
        "before this setting existed, so stored models without it use it).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSettings:
        if self.win_length > self.n_fft:
            raise ValueError("win_length must be <= n_fft")
        if self.f_max > self.sample_rate / 2:
            raise ValueError("f_max must be <= sample_rate / 2")
        if self.f_min >= self.f_max:
            raise ValueError("f_min must be < f_max")
        return self

    @classmethod
    def from_metadata(cls, stored: dict) -> FeatureSettings:
        """Settings saved with a model; entries older than a setting get the behaviour they were
        trained with, not today's default."""
        return cls.model_validate({**LEGACY_DEFAULTS, **stored})

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        """Time frames of one clip's spectrogram (centred STFT)."""
        return self.clip_samples // self.hop_length + 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)


LEGACY_DEFAULTS = {"resampler": "torchaudio_sinc"}
"""Values for settings that stored models may lack (the behaviour before the setting existed)."""


class Features:
    """The transform described by a `FeatureSettings`: build once, call per clip (thread-safe:
    nothing is written after construction)."""

    def __init__(self, settings: FeatureSettings):
        self.settings = s = settings
        if s.resampler == "torchaudio_sinc":
            _require_torchaudio()
        # The mel step's small matrix products must stay on the calling thread (see hardware).
        single_threaded_blas()
        self.window = stft_window(s.window, s.win_length, s.n_fft)  # float64 (n_fft,)
        self.filterbank = melscale_fbanks(
            n_freqs=s.n_fft // 2 + 1,
            f_min=s.f_min,
            f_max=s.f_max,
            n_mels=s.n_mels,
            sample_rate=s.sample_rate,
            norm="slaney" if s.mel_scale == "slaney" else None,
            mel_scale=s.mel_scale,
        )  # float32 (n_freqs, n_mels)
        self._blocks = band_blocks(self.filterbank)

    def mel_power(self, wave: np.ndarray) -> np.ndarray:
        """Mel power spectrogram of a mono waveform: (samples,) -> (n_mels, frames), float32."""
        s = self.settings
        framed = sliding_window_view(reflect_pad(np.asarray(wave, dtype=np.float32), s.n_fft // 2), s.n_fft)
        framed = framed[:: s.hop_length]  # (frames, n_fft), a view
        n = len(framed)
        power = np.empty((n, s.n_fft // 2 + 1), dtype=np.float32)
        # A few frames at a time, so the float64 buffers stay in the core's cache and are reused
        # (the whole clip at once moved ~5 MB per clip and took 2.5 ms here instead of 0.9).
        # float64: numpy's float32 FFT took 1.4 ms per 5 s clip here, its float64 one 0.4.
        rows = min(n, FRAME_CHUNK)
        frames = np.empty((rows, s.n_fft))
        spec = np.empty((rows, power.shape[1]), dtype=complex)
        square = np.empty((rows, power.shape[1]))
        for a in range(0, n, rows):
            k = min(rows, n - a)
            np.multiply(framed[a : a + k], self.window, out=frames[:k])
            np.fft.rfft(frames[:k], axis=-1, out=spec[:k])
            np.square(spec.real[:k], out=square[:k])
            square[:k] += np.square(spec.imag[:k])
            power[a : a + k] = square[:k]
        # Each mel band spans a few dozen of the n_freqs bins (1007 of 65664 weights are non-zero
        # by default), so the product runs as one small dense product per block of bands over
        # the bins that block touches: 0.04 ms, against 0.2 for the whole matrix on one thread.
        out = np.empty((s.n_mels, n), dtype=np.float32)
        for first, lo, hi, weights in self._blocks:
            np.matmul(weights, power[:, lo:hi].T, out=out[first : first + len(weights)])
        return out

    # --- waveform stage -------------------------------------------------------------------------

    def waveform(self, audio: Audio) -> np.ndarray:
        """Mono waveform at the model's sample rate, any length: float32 (samples,)."""
        return to_mono_resampled(audio.samples, audio.sample_rate, self.settings.sample_rate, self.settings.resampler)

    def fit_window(self, wave: np.ndarray) -> np.ndarray:
        """Pad or crop a mono waveform to exactly `clip_samples` (float32).

        Policy: shorter clips are zero-padded at the end (silence after the sound, as ESC-50 pads
        its clips). Longer clips keep the window with the most energy, searched in steps of one
        hop: a short event in a longer recording is what the user wants classified, and this
        choice does not depend on anything but the clip. Use the timeline for long recordings.
        """
        wave = np.asarray(wave, dtype=np.float32)
        if wave.shape[-1] == self.settings.clip_samples:
            return wave
        loudest = LoudestWindow(self.settings.clip_samples, self.settings.hop_length)
        loudest.add(wave)
        return loudest.window()

    def from_blocks(self, blocks: Iterable[np.ndarray], rate: int) -> np.ndarray:
        """Model input of a clip decoded a block at a time (float32 (frames, channels) at `rate`):
        the same values as `self(audio)` on the whole clip (tests/test_features.py), holding one
        window and one block instead of the clip (issue 18: a 25 MB upload took 283 MB to find
        its loudest window whole)."""
        s = self.settings
        if s.resampler != "soxr_hq":  # torchaudio's resampler takes the whole waveform at once
            samples = np.ascontiguousarray(np.concatenate(list(blocks)).T)
            return self.spectrogram(self.fit_window(to_mono_resampled(samples, rate, s.sample_rate, s.resampler)))
        # libsoxr's stream gives the one-shot `soxr.resample`'s samples, whatever the pieces.
        stream = soxr.ResampleStream(rate, s.sample_rate, 1, dtype="float32", quality="HQ") if rate != s.sample_rate else None
        loudest = LoudestWindow(s.clip_samples, s.hop_length)
        for block in blocks:
            wave = mono(np.ascontiguousarray(block.T))
            loudest.add(stream.resample_chunk(wave) if stream else wave)
        if stream:
            loudest.add(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return self.spectrogram(loudest.window())

    # --- spectrogram stage ----------------------------------------------------------------------

    def spectrogram(self, window: np.ndarray) -> np.ndarray:
        """Log-mel image of one fixed-length window: (samples,) -> (1, n_mels, frames), float32."""
        db = np.log10(np.maximum(self.mel_power(window), np.float32(1e-10)))
        db *= np.float32(10.0)
        np.maximum(db, db.max() - np.float32(self.settings.top_db), out=db)
        # Per-clip standardisation: removes recording gain, keeps the shape of the spectrum.
        # A constant image (digital silence) becomes all zeros rather than NaN. Unbiased std, as
        # torch.std; sums in float64.
        mean = db.mean(dtype=np.float64)
        std = db.std(ddof=1, dtype=np.float64)
        db -= np.float32(mean)
        db /= np.float32(std + 1e-5)
        return db[None]

    def __call__(self, audio: Audio) -> np.ndarray:
        """Decoded audio -> model input of shape (1, n_mels, frames), float32, on the calling thread."""
        return self.spectrogram(self.fit_window(self.waveform(audio)))


# --- the pieces, as torch and torchaudio define them ------------------------------------------------


def stft_window(kind: str, win_length: int, n_fft: int) -> np.ndarray:
    """torch.hann_window / torch.hamming_window (periodic, their default), zero-padded on both
    sides to `n_fft` as torch.stft pads a shorter window. float64 (n_fft,)."""
    phase = 2.0 * math.pi * np.arange(win_length) / win_length
    alpha, beta = (0.5, 0.5) if kind == "hann" else (0.54, 0.46)
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = alpha - beta * np.cos(phase)
    return window


def hz_to_mel(freq: float, mel_scale: str) -> float:
    if mel_scale == "htk":
        return 2595.0 * math.log10(1.0 + freq / 700.0)
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    mels = freq / (200.0 / 3)
    if freq >= 1000.0:
        mels = 1000.0 / (200.0 / 3) + math.log(freq / 1000.0) / (math.log(6.4) / 27.0)
    return mels


def mel_to_hz(mels: np.ndarray, mel_scale: str) -> np.ndarray:
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    min_log_mel = 1000.0 / (200.0 / 3)
    log_part = 1000.0 * np.exp(math.log(6.4) / 27.0 * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, log_part, mels * (200.0 / 3))


def melscale_fbanks(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, norm: str | None, mel_scale: str
) -> np.ndarray:
    """torchaudio.functional.melscale_fbanks in numpy (same formulas, computed in float64):
    triangular filters, equally spaced on the mel scale; `norm="slaney"` divides each by its width.
    Returns float32 (n_freqs, n_mels)."""
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel(f_min, mel_scale), hz_to_mel(f_max, mel_scale), n_mels + 2)
    f_pts = mel_to_hz(m_pts, mel_scale)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    if norm == "slaney":
        fb *= 2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])
    if (fb.max(axis=0) == 0.0).any():
        warnings.warn(
            "At least one mel filterbank has all zero values: n_mels is too high or n_freqs too low.",
            stacklevel=2,
        )
    return fb.astype(np.float32)


def reflect_pad(wave: np.ndarray, pad: int) -> np.ndarray:
    """`pad` samples mirrored on each side, the edge sample not repeated (torch.stft's "reflect")."""
    if pad == 0:
        return wave
    if len(wave) <= pad:  # torch refuses this; numpy reflects repeatedly
        return np.pad(wave, pad, mode="reflect")
    out = np.empty(len(wave) + 2 * pad, dtype=wave.dtype)
    out[pad:-pad] = wave
    out[:pad] = wave[pad:0:-1]
    out[-pad:] = wave[-2 : -pad - 2 : -1]
    return out


FRAME_CHUNK = 32
"""STFT frames per step of `Features.mel_power` (16-64 took about the same here)."""

BAND_BLOCK = 16
"""Mel bands per dense block in `Features.mel_power` (8, 16 and 32 all took 0.04-0.06 ms here)."""


def band_blocks(filterbank: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
    """(first band, first bin, end bin, weights (bands, end - first bin)) for each block of
    BAND_BLOCK bands: together exactly `filterbank.T` with the all-zero bins of each block left out."""
    blocks = []
    for first in range(0, filterbank.shape[1], BAND_BLOCK):
        part = filterbank[:, first : first + BAND_BLOCK]
        used = np.flatnonzero(part.any(axis=1))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        blocks.append((first, lo, hi, np.ascontiguousarray(part[lo:hi].T)))
    return blocks


# --- resampling -------------------------------------------------------------------------------------


MAX_RESAMPLE_DENOMINATOR = 500


def mono(samples: np.ndarray) -> np.ndarray:
    """(channels, frames) float32 -> (frames,): the channels' mean."""
    # A mono clip's mean is its one channel (same values); the mean itself cost 0.2 ms per 5 s clip.
    return samples[0] if len(samples) == 1 else samples.mean(axis=0, dtype=np.float32)


class LoudestWindow:
    """The `n`-sample window with the most energy of a mono waveform fed in pieces, among starts
    `hop` apart (the first of equals, as torch.argmax chose); a waveform shorter than `n` is
    zero-padded at the end. Holds one window and one piece whatever the waveform's length, and
    finds the window a search over the whole waveform finds: the energies are the same float64
    running sums, added in the same order."""

    def __init__(self, n: int, hop: int):
        self.n, self.hop = n, hop
        self.tail = np.zeros(0, np.float32)  # the samples from `offset` on that a window may still need
        self.energy = np.zeros(1)  # running sums of squares at offset, offset + 1, ... offset + len(tail)
        self.offset = 0
        self.next_start = 0  # the next window's start (a multiple of hop)
        self.best: np.ndarray | None = None
        self.best_total = -np.inf

    def add(self, piece: np.ndarray) -> None:
        piece = np.asarray(piece, dtype=np.float32)
        if not len(piece):
            return
        buf = np.concatenate([self.tail, piece]) if len(self.tail) else piece
        if self.best is None and len(buf) <= self.n:
            # No choice to make yet: a clip of one window or less (the usual one) is kept as it is,
            # without the energies (1.6 ms per 5 s clip).
            self.tail = buf
            return
        if self.energy.shape[0] != len(self.tail) + 1:  # the samples kept so far had no energies yet
            self.energy = np.concatenate([[0.0], np.cumsum(np.square(self.tail, dtype=np.float64))])
        sums = np.cumsum(np.concatenate([self.energy[-1:], np.square(piece, dtype=np.float64)]))
        energy = np.concatenate([self.energy[:-1], sums])
        end = self.offset + len(buf)
        if self.next_start + self.n <= end:  # windows complete in what has arrived
            rel = np.arange(self.next_start, end - self.n + 1, self.hop) - self.offset
            totals = energy[rel + self.n] - energy[rel]
            i = int(np.argmax(totals))
            if totals[i] > self.best_total:  # strictly: an earlier equal window stays
                self.best_total = totals[i]
                self.best = buf[rel[i]: rel[i] + self.n].copy()
            self.next_start = self.offset + int(rel[-1]) + self.hop
        keep = min(self.next_start, end) - self.offset
        self.tail, self.energy, self.offset = buf[keep:].copy(), energy[keep:].copy(), self.offset + keep

    def window(self) -> np.ndarray:
        if self.best is not None:
            return self.best
        if len(self.tail) == self.n:
            return self.tail
        return np.pad(self.tail, (0, self.n - len(self.tail)))  # shorter than a window: all of it


def to_mono_resampled(samples: np.ndarray, rate: int, target_rate: int, resampler: str = "soxr_hq") -> np.ndarray:
    """(channels, frames) float32 at `rate` -> (frames',) float32 mono at `target_rate`."""
    if resampler == "soxr_hq":
        # A mono clip's mean is its one channel (same values); the mean itself cost 0.2 ms per 5 s clip.
        wave = mono(np.asarray(samples, dtype=np.float32))
        if rate != target_rate:
            # libsoxr handles any ratio in time linear in the input (no kernel to build per ratio).
            wave = soxr.resample(wave, rate, target_rate, quality="HQ")
        return np.ascontiguousarray(wave, dtype=np.float32)
    torch, torchaudio = _require_torchaudio()
    wave = torch.from_numpy(np.ascontiguousarray(samples)).float().mean(dim=0)
    if rate != target_rate:
        # torchaudio's sinc kernel has (target / gcd) rows of (rate / gcd) taps: a rate coprime with
        # the target (2003 Hz, 44101 Hz) would need gigabytes. Bounding the reduced ratio keeps every
        # common rate exact (44.1k, 48k, 16k, 8k, 96k, 192k -> 22.05k) and shifts odd ones by < 0.01%.
        ratio = Fraction(rate, target_rate).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
        wave = torchaudio.functional.resample(wave, ratio.numerator, ratio.denominator)
    return wave.numpy()


def _require_torchaudio():
    """PyTorch and torchaudio, for models stored with resampler="torchaudio_sinc" only."""
    try:
        import torch
        import torchaudio
    except ImportError as e:
        raise RuntimeError(
            "this model was saved with resampler='torchaudio_sinc' (models saved before the soxr "
            "resampler existed), which needs PyTorch and torchaudio: install the PyTorch extra "
            "(pip install -r requirements/torch.txt) or retrain the model"
        ) from e
    return torch, torchaudio
