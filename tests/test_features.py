"""The feature step: agreement with the torchaudio pipeline it replaced, physics, shapes, pad/crop
policy, independence, and training == serving.

`soundclassifier.features` is numpy + libsoxr. PyTorch and torchaudio stay here as the reference:
`torch_reference` below is the torchaudio pipeline the project served before (same settings, same
resampler), and the numpy features must match it within REFERENCE_TOLERANCE.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soxr
import threadpoolctl
import torch
import torchaudio
from pydantic import ValidationError

from soundclassifier.audio import Audio, decode
from soundclassifier.classifier import Classifier
from soundclassifier.features import Features, FeatureSettings, melscale_fbanks, stft_window
from soundclassifier.store import load_model
from testkit import audiofiles as af
from training.augment import ClipDataset
from training.datasets import Clip, decode_clips

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = FeatureSettings()
FEATURES = Features(SETTINGS)
OTHER_SETTINGS = {
    "hamming-htk-short-window": FeatureSettings(window="hamming", mel_scale="htk", win_length=800),
    "16k-64-mels-nfft512": FeatureSettings(sample_rate=16000, f_max=8000.0, n_mels=64, n_fft=512, win_length=400,
                                           hop_length=160, clip_seconds=2.0),
}  # fmt: skip

REFERENCE_TOLERANCE = {torch.float32: 5e-4, torch.float64: 1e-5}
"""Largest difference allowed between the numpy features and the torchaudio reference, in the
standardised units the model sees (one unit = the clip's own standard deviation in dB, ~10-20 dB).
Measured on SIGNALS below (tests/test_features.py, this module): <= 2.2e-4 against the float32
reference as served before (torch's float32 FFT and float32 filterbank round low-level bins and
filter edges), <= 1.3e-6 against the same torchaudio code run in float64."""


def mono(samples: np.ndarray, rate: int = 22050) -> Audio:
    return Audio(samples=np.asarray(samples, np.float32)[None, :], sample_rate=rate, format="WAV")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torchaudio builds its window and filterbank in torch's default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def torch_reference(audio: Audio, settings: FeatureSettings, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The pipeline as served before this module became torch-free: torchaudio's MelSpectrogram,
    dB floored per clip, standardised with torch.std; the same soxr resampling and window policy.
    `dtype=torch.float64` runs the same code in double precision."""
    s = settings
    samples = np.asarray(audio.samples, np.float32)
    wave = samples.mean(axis=0, dtype=np.float32) if len(samples) > 1 else samples[0]
    if audio.sample_rate != s.sample_rate:
        wave = soxr.resample(wave, audio.sample_rate, s.sample_rate, quality="HQ")
    wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    n = s.clip_samples
    if len(wave) < n:
        wave = torch.nn.functional.pad(wave, (0, n - len(wave)))
    elif len(wave) > n:
        energy = torch.cat([torch.zeros(1, dtype=torch.float64), (wave.double() ** 2).cumsum(0)])
        starts = torch.arange(0, len(wave) - n + 1, s.hop_length)
        start = int(starts[int(torch.argmax(energy[starts + n] - energy[starts]))])
        wave = wave[start : start + n]
    with default_dtype(dtype):
        power = mel_spectrogram(s)(wave.to(dtype)).unsqueeze(0)
    db = 10.0 * torch.log10(torch.clamp(power, min=1e-10))
    db = torch.maximum(db, db.amax() - s.top_db)
    return ((db - db.mean()) / (db.std() + 1e-5)).float().numpy()


def mel_spectrogram(s: FeatureSettings) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=s.sample_rate, n_fft=s.n_fft, win_length=s.win_length, hop_length=s.hop_length,
        f_min=s.f_min, f_max=s.f_max, n_mels=s.n_mels, power=2.0, center=True, pad_mode="reflect",
        window_fn=torch.hann_window if s.window == "hann" else torch.hamming_window,
        mel_scale=s.mel_scale, norm="slaney" if s.mel_scale == "slaney" else None,
    )  # fmt: skip


def band_centres(settings: FeatureSettings) -> np.ndarray:
    """Centre frequency (Hz) of every mel band: where its triangular filter peaks (torchaudio's)."""
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


def chirp(seconds: float, rate: int, f0: float = 50.0, f1: float = 10000.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).astype(np.float32)


def clicks(seconds: float, rate: int) -> np.ndarray:
    x = np.zeros(round(seconds * rate), np.float32)
    x[:: rate // 3] = 0.9
    return x


# Real-ish inputs: every one is (channels, frames) at its own rate, longer or shorter than 5 s.
SIGNALS = {
    "sine-1k-22k-mono-5s": lambda: (af.sine(1000.0, 5.0)[None], 22050),
    "noise-44k-stereo-3s": lambda: (np.stack([af.noise(3.0, 44100, seed=1), af.noise(3.0, 44100, seed=2)]), 44100),
    "chirp-48k-mono-8s": lambda: (chirp(8.0, 48000)[None], 48000),
    "sine-plus-noise-16k-0.7s": lambda: ((af.sine(440.0, 0.7, 16000) + af.noise(0.7, 16000, 0.05))[None], 16000),
    "quiet-noise-8k-4s": lambda: (af.noise(4.0, 8000, amplitude=1e-4, seed=3)[None], 8000),
    "clicks-22k-6-channels-5s": lambda: (np.stack([clicks(5.0, 22050) * (c + 1) / 6 for c in range(6)]), 22050),
    "burst-in-12s-of-hiss-96k": lambda: (np.concatenate(
        [af.noise(7.0, 96000, 0.01, seed=4), af.noise(0.3, 96000, 0.9, seed=5), af.noise(4.7, 96000, 0.01, seed=6)])[None],
        96000),
}  # fmt: skip


# --- agreement with the torchaudio reference ----------------------------------------------------


@pytest.mark.parametrize("make", SIGNALS.values(), ids=SIGNALS.keys())
@pytest.mark.parametrize("settings", [SETTINGS, *OTHER_SETTINGS.values()], ids=["default", *OTHER_SETTINGS])
def test_features_match_the_torchaudio_reference(make, settings):
    samples, rate = make()
    audio = Audio(samples=samples.astype(np.float32), sample_rate=rate, format="WAV")
    got = Features(settings)(audio)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == settings.input_shape
    for dtype, tolerance in REFERENCE_TOLERANCE.items():
        expected = torch_reference(audio, settings, dtype)
        assert float(np.abs(got - expected).max()) <= tolerance, dtype


def test_silence_matches_the_reference_exactly():
    audio = mono(np.zeros(22050 * 2, np.float32))
    assert np.array_equal(FEATURES(audio), torch_reference(audio, SETTINGS))


@pytest.mark.parametrize("settings", [SETTINGS, *OTHER_SETTINGS.values()], ids=["default", *OTHER_SETTINGS])
def test_mel_power_is_torchaudios_mel_spectrogram(settings):
    """The mel power spectrogram itself, before dB: equal to float32 rounding where it matters
    (within 80 dB of the peak, the range the dB floor keeps)."""
    wave = decode(af.wav_noise(seconds=5.0)).samples[0]
    expected = mel_spectrogram(settings)(torch.from_numpy(wave)).numpy()
    got = Features(settings).mel_power(wave)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=expected.max() * 1e-8)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize(("n_freqs", "f_min", "f_max", "n_mels", "rate"),
                         [(513, 20.0, 11025.0, 128, 22050), (257, 0.0, 8000.0, 40, 16000), (1025, 50.0, 14000.0, 96, 44100)])
def test_filterbank_is_torchaudios(mel_scale, norm, n_freqs, f_min, f_max, n_mels, rate):
    """Equal to torchaudio's computed in float64 (then rounded to float32), and to its float32 one
    up to that one's rounding."""
    got = melscale_fbanks(n_freqs, f_min, f_max, n_mels, rate, norm, mel_scale)
    with default_dtype(torch.float64):
        exact = torchaudio.functional.melscale_fbanks(n_freqs, f_min, f_max, n_mels, rate, norm, mel_scale)
    assert got.shape == tuple(exact.shape) and got.dtype == np.float32
    assert np.array_equal(got, exact.float().numpy())
    single = torchaudio.functional.melscale_fbanks(n_freqs, f_min, f_max, n_mels, rate, norm, mel_scale).numpy()
    np.testing.assert_allclose(got, single, rtol=1e-4, atol=single.max() * 1e-4)


@pytest.mark.parametrize(("win_length", "n_fft"), [(1024, 1024), (800, 1024), (400, 512), (7, 16)])
def test_windows_are_torchs_periodic_windows_padded_as_stft_pads_them(win_length, n_fft):
    left = (n_fft - win_length) // 2
    for kind, make in (("hann", torch.hann_window), ("hamming", torch.hamming_window)):
        got = stft_window(kind, win_length, n_fft)
        for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 5e-7)):
            expected = torch.nn.functional.pad(make(win_length, dtype=dtype), (left, n_fft - win_length - left))
            np.testing.assert_allclose(got, expected.double().numpy(), atol=atol, rtol=0)


# --- no PyTorch where it is not needed ----------------------------------------------------------


def test_features_run_without_pytorch_installed():
    """A process where torch and torchaudio cannot be imported (as when not installed) computes the
    same features; a model saved with the legacy torchaudio resampler is refused with a clear message."""
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None          # import torch -> ImportError, as if uninstalled
        sys.modules["torchaudio"] = None
        import numpy as np
        from soundclassifier.audio import Audio
        from soundclassifier.features import Features, FeatureSettings
        audio = Audio(samples=np.random.default_rng(0).standard_normal((2, 44100 * 3)).astype(np.float32),
                      sample_rate=44100, format="WAV")
        x = Features(FeatureSettings())(audio)
        assert x.shape == (1, 128, 216) and x.dtype == np.float32
        try:
            Features(FeatureSettings(resampler="torchaudio_sinc"))
        except RuntimeError as e:
            print(e)
        else:
            raise AssertionError("legacy resampler accepted without torchaudio")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "requirements/torch.txt" in done.stdout


def test_importing_the_feature_step_loads_no_pytorch():
    script = "import sys, soundclassifier.features; print(sorted(m for m in ('torch', 'torchaudio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_blas_is_single_threaded_once_features_exist():
    """The mel product's BLAS calls stay on the calling thread (see hardware.single_threaded_blas)."""
    Features(SETTINGS)
    numpy_dir = Path(np.__file__).parent
    # numpy's own BLAS (other packages loaded later, scipy's for one, bring their own copies)
    blas = [lib for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas" and Path(lib["filepath"]).parent.name.startswith(numpy_dir.name)]  # fmt: skip
    assert blas and all(lib["num_threads"] == 1 for lib in blas), threadpoolctl.threadpool_info()


# --- physics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [1000.0, 250.0, 4000.0])
def test_sine_lights_the_mel_band_containing_its_frequency(freq):
    x = FEATURES(decode(af.wav_sine(freq=freq, seconds=5.0)))
    loudest = int(x[0].mean(axis=1).argmax())
    nearest = int(np.argmin(np.abs(band_centres(SETTINGS) - freq)))
    assert loudest == nearest, (loudest, nearest, band_centres(SETTINGS)[[loudest, nearest]])


def test_sine_energy_is_concentrated_near_its_band():
    x = FEATURES(decode(af.wav_sine(freq=1000.0, seconds=5.0)))[0].mean(axis=1)
    band = int(np.argmin(np.abs(band_centres(SETTINGS) - 1000.0)))
    far = np.concatenate([x[: band - 10], x[band + 10 :]])
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
    assert x.dtype == np.float32


def test_default_shape_is_128_by_216():
    assert SETTINGS.clip_samples == 110250
    assert SETTINGS.input_shape == (1, 128, 216)


def test_output_is_standardised_per_clip():
    x = FEATURES(decode(af.wav_noise(seconds=5.0)))
    assert abs(float(x.mean())) < 1e-4
    assert float(x.std()) == pytest.approx(1.0, abs=1e-3)


# --- pad / crop policy --------------------------------------------------------------------------


def test_short_clip_is_zero_padded_at_the_end():
    wave = af.noise(seconds=1.0)
    window = FEATURES.fit_window(wave)
    assert window.shape == (SETTINGS.clip_samples,) and window.dtype == np.float32
    assert np.array_equal(window[: len(wave)], wave)
    assert np.count_nonzero(window[len(wave) :]) == 0


def test_exact_length_clip_is_unchanged():
    wave = af.noise(seconds=5.0)
    assert np.array_equal(FEATURES.fit_window(wave), wave)


def loudest_start_whole(wave: np.ndarray, n: int, hop: int) -> int:
    """The loudest window's start by a search over the whole waveform (the reference)."""
    energy = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    starts = np.arange(0, len(wave) - n + 1, hop)
    return int(starts[int(np.argmax(energy[starts + n] - energy[starts]))])


def test_long_clip_keeps_the_loudest_window():
    rate = SETTINGS.sample_rate
    wave = af.noise(seconds=12.0, amplitude=0.01, seed=1)
    burst = slice(7 * rate, int(7.3 * rate))
    wave[burst] = af.noise(seconds=0.3, amplitude=0.9, seed=2)[: burst.stop - burst.start]
    window = FEATURES.fit_window(wave)
    start = loudest_start_whole(wave, SETTINGS.clip_samples, SETTINGS.hop_length)
    assert window.shape == (SETTINGS.clip_samples,)
    assert start <= burst.start and start + SETTINGS.clip_samples >= burst.stop
    assert start % SETTINGS.hop_length == 0
    assert np.array_equal(window, wave[start : start + SETTINGS.clip_samples])
    # not simply the first or the last five seconds
    assert float(np.abs(window).max()) > 0.5


def test_the_loudest_window_of_a_waveform_in_pieces_is_the_whole_searchs():
    """LoudestWindow holds one window and one piece; whatever the cuts, it keeps the window the
    whole-waveform search keeps (the first of equals too: constant waveforms)."""
    from soundclassifier.features import LoudestWindow

    rng = np.random.default_rng(1)
    for _ in range(1000):
        length, n, hop = int(rng.integers(1, 4000)), int(rng.integers(1, 700)), int(rng.integers(1, 300))
        wave = (rng.standard_normal(length) * rng.uniform(0, 2, length)).astype(np.float32)
        if rng.random() < 0.2:
            wave[:] = 0.5
        loudest = LoudestWindow(n, hop)
        for piece in np.split(wave, np.sort(rng.integers(0, length, int(rng.integers(0, 8))))):
            loudest.add(piece)
        if length < n:
            expected = np.pad(wave, (0, n - length))
        else:
            start = loudest_start_whole(wave, n, hop)
            expected = wave[start : start + n]
        assert np.array_equal(loudest.window(), expected), (length, n, hop)


@pytest.mark.parametrize(("rate", "channels", "seconds"), [(44100, 2, 31.0), (22050, 1, 12.0), (8000, 3, 2.0),
                                                           (48000, 1, 5.0)])
def test_a_clip_decoded_a_block_at_a_time_gets_the_whole_clips_features(rate, channels, seconds):
    """Serving decodes a clip a block at a time (memory: a block and a window, issue 18); the
    model input is the one the whole clip gives, bit for bit, however small the blocks."""
    from soundclassifier.audio import BLOCK_FRAMES, BlockDecoder

    rng = np.random.default_rng(rate)
    samples = (rng.standard_normal((int(rate * seconds), channels)) * 0.1).astype(np.float32)
    samples[len(samples) // 3 : len(samples) // 3 + rate // 4] *= 8  # a loud event mid-clip
    data = af.encode(samples, rate, "WAV", "PCM_16")
    whole = FEATURES(decode(data))
    for block in (BLOCK_FRAMES, 10_007, 999):
        clip = BlockDecoder(data, block_frames=block)
        assert np.array_equal(FEATURES.from_blocks(clip, clip.sample_rate), whole), block
        assert clip.info().frames == len(samples) and clip.info().sample_rate == rate


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
    assert np.array_equal(shared(a), alone)


def test_classifier_output_does_not_depend_on_the_batch(loaded_model):
    clf = Classifier(loaded_model)
    _, a = clf.prepare(af.wav_noise(seconds=3.0, seed=4))
    _, b = clf.prepare(af.wav_sine(freq=2000.0, seconds=6.0))
    _, c = clf.prepare(af.wav_silence())
    alone = clf.forward(np.stack([a]))[0]
    for batch in ([a, b], [a, b, c], [a, c, b, a]):
        together = clf.forward(np.stack(batch))
        np.testing.assert_allclose(together[0], alone, rtol=1e-5, atol=1e-5)
    assert alone.shape == (len(loaded_model.labels),)
    assert np.isfinite(alone).all()  # calibrated logits: their softmax is what a client sees


def test_silence_gives_finite_all_zero_features():
    x = FEATURES(decode(af.wav_silence(seconds=5.0)))
    assert tuple(x.shape) == SETTINGS.input_shape
    assert np.isfinite(x).all()
    assert np.count_nonzero(x) == 0


@pytest.mark.parametrize("signal", ["noise", "sine"])
def test_gain_invariance(signal):
    x = af.noise(seconds=5.0, seed=5) if signal == "noise" else af.sine(freq=700.0, seconds=3.0)
    loud, quiet = FEATURES(mono(x)), FEATURES(mono(0.1 * x))
    np.testing.assert_allclose(loud, quiet, atol=1e-3, rtol=0)


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
    assert int(x[0].mean(axis=1).argmax()) == int(np.argmin(np.abs(band_centres(s) - 1000.0)))


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
    wave = features.waveform(mono((0.5 * tone + 0.5 * above).astype(np.float32), rate))
    assert wave.dtype == np.float32
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
    expected = torchaudio.functional.resample(torch.from_numpy(audio.samples).mean(0), 2, 1).numpy()
    assert isinstance(legacy, np.ndarray) and np.array_equal(legacy, expected)


def test_default_resampler_is_soxr():
    assert SETTINGS.resampler == "soxr_hq"
