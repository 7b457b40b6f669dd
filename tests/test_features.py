"""The feature step: physics, shapes, pad/crop policy, independence, and training == serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchaudio
from pydantic import ValidationError

from soundclassifier.audio import Audio, decode
from soundclassifier.classifier import Classifier
from soundclassifier.features import Features, FeatureSettings
from soundclassifier.store import load_model
from testkit import audiofiles as af
from training.augment import ClipDataset
from training.datasets import Clip, decode_clips

SETTINGS = FeatureSettings()
FEATURES = Features(SETTINGS)


def mono(samples: np.ndarray, rate: int = 22050) -> Audio:
    return Audio(samples=np.asarray(samples, np.float32)[None, :], sample_rate=rate, format="WAV")


def band_centres(settings: FeatureSettings) -> np.ndarray:
    """Centre frequency (Hz) of every mel band: where its triangular filter peaks."""
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=settings.n_fft // 2 + 1,
        f_min=settings.f_min,
        f_max=settings.f_max,
        n_mels=settings.n_mels,
        sample_rate=settings.sample_rate,
        norm="slaney" if settings.mel_scale == "slaney" else None,
        mel_scale=settings.mel_scale,
    )
    freqs = torch.linspace(0, settings.sample_rate / 2, settings.n_fft // 2 + 1)
    return freqs[fb.argmax(dim=0)].numpy()


# --- physics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [SETTINGS, FeatureSettings(window="hamming", mel_scale="htk", win_length=800)],
                         ids=["default", "hamming-htk-short-window"])
def test_mel_power_is_torchaudios_mel_spectrogram(settings):
    """Features computes torchaudio's MelSpectrogram(power=2) its own (faster) way: same numbers."""
    wave = torch.from_numpy(decode(af.wav_noise(seconds=5.0)).samples[0])
    expected = torchaudio.transforms.MelSpectrogram(
        sample_rate=settings.sample_rate, n_fft=settings.n_fft, win_length=settings.win_length,
        hop_length=settings.hop_length, f_min=settings.f_min, f_max=settings.f_max, n_mels=settings.n_mels,
        window_fn=torch.hann_window if settings.window == "hann" else torch.hamming_window, power=2.0,
        center=True, mel_scale=settings.mel_scale, norm="slaney" if settings.mel_scale == "slaney" else None,
    )(wave)  # fmt: skip
    got = Features(settings).mel_power(wave)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("freq", [1000.0, 250.0, 4000.0])
def test_sine_lights_the_mel_band_containing_its_frequency(freq):
    x = FEATURES(decode(af.wav_sine(freq=freq, seconds=5.0)))
    loudest = int(x[0].mean(dim=1).argmax())
    nearest = int(np.argmin(np.abs(band_centres(SETTINGS) - freq)))
    assert loudest == nearest, (loudest, nearest, band_centres(SETTINGS)[[loudest, nearest]])


def test_sine_energy_is_concentrated_near_its_band():
    x = FEATURES(decode(af.wav_sine(freq=1000.0, seconds=5.0)))[0].mean(dim=1)
    band = int(np.argmin(np.abs(band_centres(SETTINGS) - 1000.0)))
    far = torch.cat([x[: band - 10], x[band + 10 :]])
    assert float(x[band]) > float(far.max()) + 2.0  # in standardised units


@pytest.mark.parametrize(
    "settings",
    [
        FeatureSettings(),
        FeatureSettings(clip_seconds=1.0, hop_length=256, n_mels=40, n_fft=512, win_length=400),
        FeatureSettings(sample_rate=16000, clip_seconds=2.5, hop_length=160, f_max=8000.0, n_mels=64),
    ],
    ids=["default", "short-hop256", "16k"],
)
def test_frame_count_and_shape(settings):
    assert settings.frames == settings.clip_samples // settings.hop_length + 1
    assert settings.input_shape == (1, settings.n_mels, settings.frames)
    x = Features(settings)(decode(af.wav_noise(seconds=2.0)))
    assert tuple(x.shape) == (1, settings.n_mels, settings.clip_samples // settings.hop_length + 1)
    assert x.dtype == torch.float32


def test_default_shape_is_128_by_216():
    assert SETTINGS.clip_samples == 110250
    assert SETTINGS.input_shape == (1, 128, 216)


def test_output_is_standardised_per_clip():
    x = FEATURES(decode(af.wav_noise(seconds=5.0)))
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)


# --- pad / crop policy --------------------------------------------------------------------------


def test_short_clip_is_zero_padded_at_the_end():
    wave = torch.from_numpy(af.noise(seconds=1.0))
    window = FEATURES.fit_window(wave)
    assert window.shape == (SETTINGS.clip_samples,)
    assert torch.equal(window[: len(wave)], wave)
    assert torch.count_nonzero(window[len(wave) :]) == 0


def test_exact_length_clip_is_unchanged():
    wave = torch.from_numpy(af.noise(seconds=5.0))
    assert torch.equal(FEATURES.fit_window(wave), wave)


def test_long_clip_keeps_the_loudest_window():
    rate = SETTINGS.sample_rate
    wave = af.noise(seconds=12.0, amplitude=0.01, seed=1)
    burst = slice(7 * rate, int(7.3 * rate))
    wave[burst] = af.noise(seconds=0.3, amplitude=0.9, seed=2)[: burst.stop - burst.start]
    wave_t = torch.from_numpy(wave)
    window = FEATURES.fit_window(wave_t)
    start = FEATURES.loudest_start(wave_t)
    assert window.shape == (SETTINGS.clip_samples,)
    assert start <= burst.start and start + SETTINGS.clip_samples >= burst.stop
    assert start % SETTINGS.hop_length == 0
    assert torch.equal(window, wave_t[start : start + SETTINGS.clip_samples])
    # not simply the first or the last five seconds
    assert float(window.abs().max()) > 0.5


def test_long_clip_through_decode_contains_the_burst():
    rate = 22050
    wave = af.noise(seconds=12.0, amplitude=0.01, seed=1)
    wave[7 * rate : 7 * rate + 4410] = 0.9 * af.sine(freq=3000.0, seconds=0.2)[:4410] / 0.5
    x = FEATURES(decode(af.encode(wave, rate, "WAV", "FLOAT")))
    quiet = FEATURES(decode(af.encode(af.noise(seconds=12.0, amplitude=0.01, seed=1), rate, "WAV", "FLOAT")))
    band = int(np.argmin(np.abs(band_centres(SETTINGS) - 3000.0)))
    # the 3 kHz burst is in the kept window: its band peaks far above the quiet version
    assert float(x[0, band].max()) > float(quiet[0, band].max()) + 1.0


# --- independence, silence, gain ----------------------------------------------------------------


def test_features_do_not_depend_on_previous_clips():
    a = decode(af.wav_noise(seconds=2.0, seed=3))
    b = decode(af.wav_sine(freq=500.0, seconds=7.0))
    c = decode(af.wav_silence(seconds=1.0))
    alone = Features(SETTINGS)(a)
    shared = Features(SETTINGS)
    shared(b)
    shared(c)
    assert torch.equal(shared(a), alone)


def test_classifier_output_does_not_depend_on_the_batch(loaded_model):
    clf = Classifier(loaded_model)
    _, a = clf.prepare(af.wav_noise(seconds=3.0, seed=4))
    _, b = clf.prepare(af.wav_sine(freq=2000.0, seconds=6.0))
    _, c = clf.prepare(af.wav_silence())
    alone = clf.forward(np.stack([a]))[0]
    for batch in ([a, b], [a, b, c], [a, c, b, a]):
        together = clf.forward(np.stack(batch))
        np.testing.assert_allclose(together[0], alone, atol=1e-5)
    assert alone.shape == (len(loaded_model.labels),)
    assert float(alone.sum()) == pytest.approx(1.0, abs=1e-5)


def test_silence_gives_finite_all_zero_features():
    x = FEATURES(decode(af.wav_silence(seconds=5.0)))
    assert tuple(x.shape) == SETTINGS.input_shape
    assert bool(x.isfinite().all())
    assert torch.count_nonzero(x) == 0


@pytest.mark.parametrize("signal", ["noise", "sine"])
def test_gain_invariance(signal):
    x = af.noise(seconds=5.0, seed=5) if signal == "noise" else af.sine(freq=700.0, seconds=3.0)
    loud, quiet = FEATURES(mono(x)), FEATURES(mono(0.1 * x))
    torch.testing.assert_close(loud, quiet, atol=1e-3, rtol=0)


# --- settings -----------------------------------------------------------------------------------


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        SETTINGS.n_mels = 64
    assert SETTINGS.n_mels == 128


@pytest.mark.parametrize(
    "bad",
    [
        {"win_length": 2048, "n_fft": 1024},
        {"f_max": 12000.0},  # > 22050 / 2
        {"sample_rate": 16000},  # default f_max 11025 > 8000
        {"f_min": 5000.0, "f_max": 4000.0},
        {"n_mels": 0},
        {"hop_length": -1},
        {"window": "blackman"},
        {"mel_scale": "bark"},
        {"n_mel": 64},  # typo: unknown fields are refused, not ignored
    ],
)
def test_settings_reject_bad_combinations(bad):
    with pytest.raises(ValidationError):
        FeatureSettings(**bad)


def test_settings_round_trip():
    s = FeatureSettings(sample_rate=16000, f_max=8000.0, n_mels=64, window="hamming", mel_scale="htk")
    assert FeatureSettings.model_validate(s.model_dump()) == s
    assert FeatureSettings.model_validate(json.loads(json.dumps(s.model_dump()))) == s
    assert FeatureSettings.model_validate(s.model_dump()) != FeatureSettings()


def test_htk_hamming_settings_build_a_working_transform():
    s = FeatureSettings(window="hamming", mel_scale="htk", n_mels=64)
    x = Features(s)(decode(af.wav_sine(freq=1000.0, seconds=5.0)))
    assert tuple(x.shape) == (1, 64, 216)
    assert int(x[0].mean(dim=1).argmax()) == int(np.argmin(np.abs(band_centres(s) - 1000.0)))


# --- the identity test: training path == serving path -------------------------------------------


IDENTITY_FILES = {
    "5s-22k-mono-wav": lambda: af.wav_noise(seconds=5.0, seed=6),
    "3s-44k-stereo-flac": lambda: af.encode(
        np.stack([af.noise(3.0, 44100, seed=7), af.sine(300.0, 3.0, 44100)], axis=1), 44100, "FLAC", "PCM_24"
    ),
    "8s-48k-wav-with-burst": lambda: af.encode(
        np.concatenate([af.noise(6.0, 48000, 0.02, seed=8), af.noise(2.0, 48000, 0.8, seed=9)]),
        48000,
        "WAV",
        "FLOAT",
    ),
    "1s-mp3": lambda: af.mp3_sine(freq=1500.0, seconds=1.0),
}


@pytest.mark.parametrize("make", IDENTITY_FILES.values(), ids=IDENTITY_FILES.keys())
def test_training_and_serving_compute_identical_inputs(make, tmp_path, tiny_model_tag):
    data = make()
    path = tmp_path / "clip.bin"
    path.write_bytes(data)

    # Serving: the model entry alone decides the features.
    served = load_model(tiny_model_tag)
    _, serving_x = Classifier(served).prepare(data)

    # Training: the settings stored in the model's metadata, through decode_clips + ClipDataset.
    settings = FeatureSettings.model_validate(served.metadata["feature_settings"])
    assert settings == FeatureSettings()  # what training used, stored faithfully
    features = Features(settings)
    labels = served.labels
    decoded = decode_clips([Clip(path, labels[0], 1)], labels, features)
    assert decoded.skipped == []
    training_x, target = ClipDataset(decoded.waves, decoded.targets, features, augment=None)[0]

    assert target == 0
    assert tuple(training_x.shape) == settings.input_shape
    assert training_x.dtype == torch.float32
    assert torch.equal(training_x, torch.from_numpy(serving_x))


# --- resampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 48000, 16000, 8000])
@pytest.mark.parametrize("resampler", ["soxr_hq", "torchaudio_sinc"])
def test_resampling_keeps_a_tone_and_removes_what_lies_above_the_new_nyquist(rate, resampler):
    features = Features(FeatureSettings(resampler=resampler))
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000.0 * t)
    above = np.sin(2 * np.pi * 15000.0 * t) if rate > 30000 else 0 * t  # above 11.025 kHz
    wave = features.waveform(mono((0.5 * tone + 0.5 * above).astype(np.float32), rate)).numpy()
    assert abs(len(wave) - 22050) <= 1
    spectrum = np.abs(np.fft.rfft(wave[2000:-2000] * np.hanning(len(wave) - 4000)))
    freqs = np.fft.rfftfreq(len(wave) - 4000, 1 / 22050)
    assert abs(freqs[np.argmax(spectrum)] - 1000.0) < 5.0
    # the 15 kHz tone would alias to 7.05 kHz: it must be filtered out, not folded back
    alias = spectrum[np.abs(freqs - 7050.0) < 20].max()
    assert alias < 1e-2 * spectrum.max()


def test_models_saved_before_the_resampler_setting_keep_torchaudios_sinc():
    stored = SETTINGS.model_dump()
    del stored["resampler"]
    assert FeatureSettings.from_metadata(stored).resampler == "torchaudio_sinc"
    assert FeatureSettings.from_metadata(SETTINGS.model_dump()) == SETTINGS
    audio = mono(np.random.default_rng(0).standard_normal(44100).astype(np.float32), 44100)
    legacy = Features(FeatureSettings.from_metadata(stored)).waveform(audio)
    assert torch.equal(legacy, torchaudio.functional.resample(torch.from_numpy(audio.samples).mean(0), 2, 1))


def test_default_resampler_is_soxr():
    assert SETTINGS.resampler == "soxr_hq"
