"""Training-time augmentation: the speed change's physics, and that every item keeps the model's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundclassifier.features import Features, FeatureSettings
from training.augment import AugmentSettings, ClipDataset, speed_change

RATE = 22050


def tone(freq: float, seconds: float) -> np.ndarray:
    """A waveform as training holds it: numpy float32 (the feature step is numpy)."""
    t = np.arange(round(seconds * RATE)) / RATE
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def peak_hz(wave: np.ndarray) -> float:
    x = np.asarray(wave, dtype=np.float64)
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[np.abs(np.fft.rfft(x * np.hanning(len(x)))).argmax()])


@pytest.mark.parametrize("factor", [0.85, 1.0, 1.15])
def test_speed_change_scales_duration_and_pitch_together(factor):
    wave = tone(1000.0, 2.0)
    out = speed_change(wave, factor)
    assert len(out) == pytest.approx(len(wave) / factor, abs=2)
    assert peak_hz(out) == pytest.approx(1000.0 * factor, abs=2)
    assert out.dtype == np.float32


def test_augmented_items_keep_the_model_input_shape():
    settings = FeatureSettings(clip_seconds=1.0)
    features = Features(settings)
    waves = [tone(440.0, 0.3), tone(880.0, 1.0), tone(220.0, 3.0)]
    ds = ClipDataset(waves, [0, 1, 2], features, AugmentSettings(speed=0.2))
    torch.manual_seed(0)
    for i in range(3):
        x, target = ds[i]
        assert x.shape == settings.input_shape and target == i
        assert torch.isfinite(x).all()


def test_speed_is_the_only_change_when_everything_else_is_off():
    features = Features(FeatureSettings(clip_seconds=1.0))
    wave = tone(1000.0, 1.0)
    plain = ClipDataset([wave], [0], features, None)[0][0]
    same = ClipDataset([wave], [0], features, AugmentSettings.off())[0][0]
    torch.testing.assert_close(same, plain)
    torch.manual_seed(1)
    faster = ClipDataset([wave], [0], features, AugmentSettings(speed=0.2, shift=False, noise_prob=0.0,
                                                                 freq_masks=0, time_masks=0))[0][0]  # fmt: skip
    # the tone's mel band moves up (or down) with the speed: the image changes, its shape does not
    assert faster.shape == plain.shape
    assert plain[0].mean(dim=1).argmax() != faster[0].mean(dim=1).argmax()


def test_time_masks_scale_with_the_window():
    five = ClipDataset([tone(440.0, 5.0)], [0], Features(FeatureSettings()), AugmentSettings())
    short = ClipDataset([tone(440.0, 0.75)], [0], Features(FeatureSettings(clip_seconds=0.75)), AugmentSettings())
    assert five.time_mask.mask_param == 24  # of 216 frames, as before windows were chosen per data set
    assert short.time_mask.mask_param == 4  # of 33 frames: two masks cannot hide the whole word


def test_a_short_clip_lands_whole_somewhere_in_the_window():
    settings = FeatureSettings(clip_seconds=1.0)
    word = tone(1000.0, 0.3)
    ds = ClipDataset([word], [0], Features(settings), AugmentSettings(noise_prob=0.0, freq_masks=0, time_masks=0))
    starts = set()
    torch.manual_seed(0)
    for _ in range(20):
        x = ds[0][0][0]  # (mels, frames)
        loud = (x.mean(dim=0) > 0).nonzero().flatten()
        # one unbroken run of loud frames as long as the tone: never split at the window's edge
        assert loud.max() - loud.min() + 1 == len(loud)
        assert abs(len(loud) - round(0.3 * 22050 / 512)) <= 3
        starts.add(int(loud.min()))
    assert len(starts) > 5  # and not always in the same place
