"""Audio -> the model's input: the one implementation shared by training, serving and batch jobs.

`FeatureSettings` is the single source of truth for the spectrogram. Training stores it in the model's
metadata (`settings.model_dump()`); serving rebuilds it with `FeatureSettings.from_metadata(...)`, so
the two paths cannot drift.

Pipeline for one clip (`Features.__call__`):
    samples (channels, frames) at any rate
      -> mono (mean of channels)
      -> resample to `sample_rate` (libsoxr's high-quality filter, as librosa does by default)
      -> fixed window of `clip_seconds` (see `fit_window` for the pad / crop policy)
      -> mel power spectrogram -> dB (ref 1.0), floored at `top_db` below the clip's own peak
      -> per-clip standardisation (zero mean, unit variance)
    output: float32 tensor of shape (1, n_mels, frames), frames = clip_samples // hop_length + 1.

Everything is computed per clip, so a clip's features never depend on what else is in a batch.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Literal

import numpy as np
import soxr
import torch
import torchaudio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from soundclassifier.audio import Audio
from soundclassifier.hardware import torch_threads


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
    """The transform described by a `FeatureSettings`: build once, call per clip."""

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        s = settings
        window_fn = torch.hann_window if s.window == "hann" else torch.hamming_window
        # torchaudio.transforms.MelSpectrogram(power=2, center=True) computed as it does (same
        # torch.stft call, same filterbank), except |X|^2 as X * conj(X) (its abs().pow(2) took
        # 0.4 of its 1.4 ms per clip here) and the filterbank as a sparse matrix: each mel band
        # spans at most a few dozen of the 513 bins (1007 of 65664 weights are non-zero), and the
        # dense product took 0.35 ms, the sparse one 0.03. Equal to float rounding;
        # tests/test_features.py compares the two.
        self.window = window_fn(s.win_length)
        filterbank = torchaudio.functional.melscale_fbanks(
            n_freqs=s.n_fft // 2 + 1,
            f_min=s.f_min,
            f_max=s.f_max,
            n_mels=s.n_mels,
            sample_rate=s.sample_rate,
            norm="slaney" if s.mel_scale == "slaney" else None,
            mel_scale=s.mel_scale,
        )  # (n_freqs, n_mels)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is all we use
            warnings.simplefilter("ignore", UserWarning)
            self.filterbank = filterbank.T.contiguous().to_sparse_csr()  # (n_mels, n_freqs)

    def mel_power(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram of a mono waveform: (samples,) -> (n_mels, frames)."""
        s = self.settings
        spec = torch.stft(wave, s.n_fft, s.hop_length, s.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)  # fmt: skip
        power = (spec * spec.conj()).real.contiguous()  # (n_freqs, frames); .real is a strided view
        return self.filterbank @ power

    # --- waveform stage -------------------------------------------------------------------------

    def waveform(self, audio: Audio) -> torch.Tensor:
        """Mono waveform at the model's sample rate, any length: shape (samples,)."""
        return to_mono_resampled(audio.samples, audio.sample_rate, self.settings.sample_rate, self.settings.resampler)

    def fit_window(self, wave: torch.Tensor) -> torch.Tensor:
        """Pad or crop a mono waveform to exactly `clip_samples`.

        Policy: shorter clips are zero-padded at the end (silence after the sound, as ESC-50 pads
        its clips). Longer clips keep the window with the most energy, searched in steps of one
        hop: a short event in a longer recording is what the user wants classified, and this
        choice does not depend on anything but the clip. Use the timeline for long recordings.
        """
        n = self.settings.clip_samples
        if wave.shape[-1] == n:
            return wave
        if wave.shape[-1] < n:
            return torch.nn.functional.pad(wave, (0, n - wave.shape[-1]))
        start = self.loudest_start(wave)
        return wave[start : start + n]

    def loudest_start(self, wave: torch.Tensor) -> int:
        n, hop = self.settings.clip_samples, self.settings.hop_length
        energy = torch.cat([torch.zeros(1, dtype=torch.float64), (wave.double() ** 2).cumsum(0)])
        starts = torch.arange(0, wave.shape[-1] - n + 1, hop)
        totals = energy[starts + n] - energy[starts]
        return int(starts[int(torch.argmax(totals))])

    # --- spectrogram stage ----------------------------------------------------------------------

    def spectrogram(self, window: torch.Tensor) -> torch.Tensor:
        """Log-mel image of one fixed-length window: (samples,) -> (1, n_mels, frames), float32."""
        power = self.mel_power(window.float()).unsqueeze(0)  # (1, n_mels, frames)
        db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
        db = torch.maximum(db, db.amax() - self.settings.top_db)
        # Per-clip standardisation: removes recording gain, keeps the shape of the spectrum.
        # A constant image (digital silence) becomes all zeros rather than NaN.
        return ((db - db.mean()) / (db.std() + 1e-5)).float()

    def __call__(self, audio: Audio) -> torch.Tensor:
        """Decoded audio -> model input of shape (1, n_mels, frames), on the calling thread alone.

        One thread even on an idle machine: a second one saved 0.5 ms of 4 per clip, but PyTorch's
        OpenMP threads then spin for a while after the work, and the forward pass that followed
        took 9 ms instead of 5.8 (measured ad hoc here: OpenVINO bf16, one clip, in process)."""
        with torch_threads(1):
            return self.spectrogram(self.fit_window(self.waveform(audio)))


MAX_RESAMPLE_DENOMINATOR = 500


def to_mono_resampled(samples: np.ndarray, rate: int, target_rate: int, resampler: str = "soxr_hq") -> torch.Tensor:
    """(channels, frames) float32 at `rate` -> (frames',) float32 mono at `target_rate`."""
    if resampler == "soxr_hq":
        # A mono clip's mean is its one channel (same values); the mean itself cost 0.2 ms per 5 s clip.
        samples = np.asarray(samples, dtype=np.float32)
        wave = samples[0] if len(samples) == 1 else samples.mean(axis=0, dtype=np.float32)
        if rate != target_rate:
            # libsoxr handles any ratio in time linear in the input (no kernel to build per ratio).
            wave = soxr.resample(wave, rate, target_rate, quality="HQ")
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    wave = torch.from_numpy(np.ascontiguousarray(samples)).float().mean(dim=0)
    if rate != target_rate:
        # torchaudio's sinc kernel has (target / gcd) rows of (rate / gcd) taps: a rate coprime with
        # the target (2003 Hz, 44101 Hz) would need gigabytes. Bounding the reduced ratio keeps every
        # common rate exact (44.1k, 48k, 16k, 8k, 96k, 192k -> 22.05k) and shifts odd ones by < 0.01%.
        ratio = Fraction(rate, target_rate).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
        wave = torchaudio.functional.resample(wave, ratio.numerator, ratio.denominator)
    return wave
