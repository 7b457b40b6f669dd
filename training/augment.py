"""Training-time augmentation: a torch Dataset that turns decoded waveforms into model inputs.

The feature step is the core's `Features` (the same code serving runs); augmentation only wraps it:

    waveform -> [train: speed change (tempo and pitch together, as a tape played faster or slower);
                 random window of a long clip, a short clip at a random place in the window, a
                 clip of exactly the window's length shifted circularly;
                 additive noise at a random SNR]
             -> Features.fit_window -> Features.spectrogram
             -> [train: SpecAugment frequency and time masks]

Mixup is applied per batch by fastai's `MixUp` callback in train.py. Validation items get no
augmentation, so they are exactly what serving computes for the same file. The feature step works on
numpy arrays; items become torch tensors here, at the boundary into fastai. Random draws come from
torch's generator, which fastai's `set_seed` seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
import torch
import torchaudio

from soundclassifier.features import Features


@dataclass(frozen=True)
class AugmentSettings:
    speed: float = 0.0  # resample by a factor drawn from [1 - speed, 1 + speed] (0 = off)
    shift: bool = True  # random time shift / crop: events occur anywhere in a clip
    noise_prob: float = 0.5  # chance of mixing white noise in at an SNR drawn from noise_snr_db
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    freq_masks: int = 2  # SpecAugment (Park et al. 2019): masks of up to this share of the mel bands
    freq_mask_share: float = 16 / 128  # (16 of 128), so a model with fewer bands is masked alike
    time_masks: int = 2  # ... and of up to this share of the window's frames (24 of a 5 s window's 216):
    time_mask_share: float = 24 / 216  # a share, so a 0.75 s window is not masked whole

    @classmethod
    def off(cls) -> AugmentSettings:
        return cls(speed=0.0, shift=False, noise_prob=0.0, freq_masks=0, time_masks=0)


class ClipDataset(torch.utils.data.Dataset):
    """Indexable (features, target) pairs; augments only when `augment` is given."""

    def __init__(
        self,
        waves: list[np.ndarray],
        targets: list[int],
        features: Features,
        augment: AugmentSettings | None = None,
    ):
        self.waves, self.targets, self.features, self.augment = waves, targets, features, augment
        if augment is not None:
            bands = features.settings.n_mels
            self.freq_mask = torchaudio.transforms.FrequencyMasking(max(1, round(augment.freq_mask_share * bands)))
            frames = features.settings.frames
            self.time_mask = torchaudio.transforms.TimeMasking(max(1, round(augment.time_mask_share * frames)))

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wave = self.waves[i]
        a = self.augment
        if a is None:
            return torch.from_numpy(self.features.spectrogram(self.features.fit_window(wave))), self.targets[i]
        n = self.features.settings.clip_samples
        if a.speed > 0:
            factor = 1 + a.speed * (2 * float(torch.rand(())) - 1)
            wave = speed_change(wave, factor)
        if a.shift and wave.shape[-1] > n:  # long recording: a random window of it
            start = int(torch.randint(0, wave.shape[-1] - n + 1, ()))
            window = wave[start : start + n]
        elif a.shift and wave.shape[-1] < n:  # short clip: anywhere in the window, not wrapped round its edge
            start = int(torch.randint(0, n - wave.shape[-1] + 1, ()))
            window = np.pad(wave, (start, n - wave.shape[-1] - start))
        else:
            window = self.features.fit_window(wave)
            if a.shift:
                window = np.roll(window, int(torch.randint(0, n, ())))
        if a.noise_prob > 0 and torch.rand(()) < a.noise_prob:
            lo, hi = a.noise_snr_db
            snr = lo + (hi - lo) * float(torch.rand(()))
            power = max(float(np.mean(np.square(window, dtype=np.float64))), 1e-10)
            noise = torch.randn(len(window)).numpy()
            window = window + noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
        spec = torch.from_numpy(self.features.spectrogram(window))
        for _ in range(a.freq_masks):
            spec = self.freq_mask(spec)
        for _ in range(a.time_masks):
            spec = self.time_mask(spec)
        return spec, self.targets[i]


def speed_change(wave: np.ndarray, factor: float) -> np.ndarray:
    """The waveform played `factor` times as fast: 1/factor as long, every frequency times factor."""
    rate = 10_000  # any reference rate: only the ratio matters to libsoxr
    out = soxr.resample(np.asarray(wave, dtype=np.float32), rate * factor, rate, quality="MQ")
    return np.ascontiguousarray(out, dtype=np.float32)
