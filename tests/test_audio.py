"""Decoding: every supported format comes back right, every bad file fails with a kind and a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from soundclassifier.audio import Limits, decode
from soundclassifier.errors import AudioError, ErrorKind
from soundclassifier.features import Features, FeatureSettings
from testkit import audiofiles as af

SETTINGS = FeatureSettings()


@pytest.mark.parametrize(
    ("make", "rate", "fmt"),
    [
        (af.wav_sine, 22050, "WAV"),
        (af.flac_sine, 22050, "FLAC"),
        (af.ogg_vorbis_sine, 22050, "OGG"),
        (af.ogg_opus_sine, 48000, "OGG"),
        (af.mp3_sine, 22050, "MP3"),
    ],
    ids=["wav", "flac", "ogg-vorbis", "ogg-opus", "mp3"],
)
def test_supported_formats_decode(make, rate, fmt):
    audio = decode(make(seconds=1.0))
    assert audio.format in ({fmt, "MPEG"} if fmt == "MP3" else {fmt})
    assert audio.sample_rate == rate
    assert audio.channels == 1
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape == (1, audio.frames)
    # Lossy codecs may add or drop a frame's worth of priming samples, never more.
    assert audio.duration == pytest.approx(1.0, abs=0.06)
    assert np.isfinite(audio.samples).all()
    assert 0.3 < np.abs(audio.samples).max() <= 1.0  # the 0.5-amplitude sine survived


def test_decode_reads_a_path(tmp_path):
    path = tmp_path / "clip.wav"
    path.write_bytes(af.wav_sine(seconds=0.5))
    for source in (path, str(path)):
        audio = decode(source)
        assert (audio.sample_rate, audio.frames) == (22050, 11025)


def test_wav_samples_are_the_written_values():
    audio = decode(af.wav_sine(freq=440, seconds=0.25))
    expected = af.sine(freq=440, seconds=0.25)
    np.testing.assert_allclose(audio.samples[0], expected, atol=2 / 32768)


@pytest.mark.parametrize(("container", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("AIFF", "PCM_16"),
                                                  ("WAV", "PCM_24"), ("WAV", "FLOAT")])
def test_samples_are_libsndfiles_own_float_conversion(container, subtype):
    """16-bit PCM is read as int16 and scaled here (faster): the values must be libsndfile's, bit for bit."""
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0, 0.4, (4410, 2)), -1, 1).astype(np.float32)
    x[:3, 0] = [-1.0, 1.0, 0.0]  # the extremes of the 16-bit range
    data = af.encode(x, 44100, container, subtype)
    with sf.SoundFile(io.BytesIO(data)) as f:
        expected = f.read(dtype="float32", always_2d=True).T
    got = decode(data).samples
    assert got.dtype == np.float32
    assert np.array_equal(got, expected)


BAD_FILES = [
    ("empty", af.empty, ErrorKind.EMPTY),
    ("random-bytes", af.random_bytes, ErrorKind.NOT_AUDIO),
    ("text", af.text, ErrorKind.NOT_AUDIO),
    ("zero-frame-wav", af.zero_frame_wav, ErrorKind.EMPTY),
    ("truncated-wav", af.truncated_wav, ErrorKind.CORRUPT),
    ("truncated-flac", af.truncated_flac, ErrorKind.CORRUPT),
    # The header announces a second of audio; none follows. That is a truncated file, not an empty one.
    ("header-only-wav", af.header_only_wav, ErrorKind.CORRUPT),
    ("nan-float-wav", af.nan_float_wav, ErrorKind.NON_FINITE),
    ("inf-float-wav", af.inf_float_wav, ErrorKind.NON_FINITE),
    ("gigabyte-header-wav", af.gigabyte_header_wav, ErrorKind.CORRUPT),
]


@pytest.mark.parametrize(("make", "kind"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_files_raise_audio_error(make, kind):
    with pytest.raises(AudioError) as info:
        decode(make())
    err = info.value
    assert err.kind == kind, f"{err.kind}: {err.message}"
    assert isinstance(err.message, str) and len(err.message.strip()) > 10
    assert str(err) == err.message
    assert err.to_dict() == {"error": kind.value, "detail": err.message}


def test_too_long_is_refused_before_decoding():
    with pytest.raises(AudioError) as info:
        decode(af.wav_sine(seconds=3.0), Limits(max_seconds=2.0))
    assert info.value.kind == ErrorKind.TOO_LONG
    assert "3.0 s" in info.value.message and "2 s" in info.value.message
    # exactly at the limit is fine
    assert decode(af.wav_sine(seconds=2.0), Limits(max_seconds=2.0)).duration == pytest.approx(2.0)


def test_too_large_is_refused():
    data = af.wav_sine(seconds=1.0)
    with pytest.raises(AudioError) as info:
        decode(data, Limits(max_bytes=len(data) - 1))
    assert info.value.kind == ErrorKind.TOO_LARGE
    assert f"{len(data):,}" in info.value.message
    assert decode(data, Limits(max_bytes=len(data))).frames == 22050


def test_limits_apply_to_paths_too(tmp_path):
    path = tmp_path / "long.wav"
    path.write_bytes(af.wav_sine(seconds=1.5))
    with pytest.raises(AudioError) as info:
        decode(path, Limits(max_seconds=1.0))
    assert info.value.kind == ErrorKind.TOO_LONG


def test_nan_file_is_non_finite():
    with pytest.raises(AudioError) as info:
        decode(af.nan_float_wav())
    assert info.value.kind == ErrorKind.NON_FINITE


@pytest.mark.parametrize(
    ("make", "rate", "channels"),
    [(af.wav_8bit, 22050, 1), (af.wav_192k, 192000, 1), (af.wav_32_channels, 22050, 32)],
    ids=["8-bit", "192kHz", "32-channel"],
)
def test_unusual_files_decode_and_give_finite_features(make, rate, channels):
    audio = decode(make(seconds=1.0))
    assert audio.sample_rate == rate
    assert audio.channels == channels
    assert audio.duration == pytest.approx(1.0)
    x = Features(SETTINGS)(audio)
    assert tuple(x.shape) == SETTINGS.input_shape == (1, 128, 216)
    assert x.dtype == np.float32
    assert bool(np.isfinite(x).all())
    assert float(x.std()) > 0.5  # a real spectrogram, not a constant image


def test_32_channels_are_averaged_to_mono():
    audio = decode(af.wav_32_channels(seconds=0.5))
    wave = Features(SETTINGS).waveform(audio)
    gains = (np.arange(32) + 1) / 32
    expected = af.sine(seconds=0.5) * gains.mean()
    np.testing.assert_allclose(wave, expected, atol=1e-3)


@pytest.mark.parametrize("rate", [10_000_019, 999, 800_000, 768_000, 192_001])
def test_sample_rates_outside_the_supported_range_are_refused(rate):
    data = af.encode(af.sine(100.0, 0.01, rate), rate, "WAV", "PCM_16")
    with pytest.raises(AudioError) as e:
        decode(data)
    assert e.value.kind is ErrorKind.UNSUPPORTED
    assert f"{rate:,} Hz" in e.value.message


def test_192_khz_is_the_highest_rate_decoded():
    assert decode(af.wav_192k(seconds=0.1)).sample_rate == 192_000


def test_a_timeline_over_its_work_budget_is_refused_before_its_first_window():
    """Issue 32: the work of a timeline is the samples its overlapping windows hand to resampling
    (each window's counted whole), at the file's rate: 4x the hop's windows at 4x the rate cost
    16x, not the same. Refused from the header, before a window is decoded."""
    from soundclassifier.timeline import stream_windows, window_count

    rate, seconds, channels = 16_000, 20.0, 2
    data = af.encode(np.zeros((int(rate * seconds), channels), np.float32), rate, "WAV", "PCM_16")
    win = int(SETTINGS.clip_seconds * rate)
    for hop_s in (0.25, 1.0, 5.0):
        hop = int(hop_s * rate)
        work = window_count(int(rate * seconds), win, hop) * win * channels
        within = stream_windows(data, SETTINGS, hop_s, Limits(max_work_samples=work))
        assert sum(1 for _ in within.windows) == window_count(int(rate * seconds), win, hop)
        over = stream_windows(data, SETTINGS, hop_s, Limits(max_work_samples=work - 1))
        with pytest.raises(AudioError) as e:
            next(over.windows)
        assert e.value.kind is ErrorKind.TOO_LARGE
        assert f"{work:,} samples" in e.value.message and f"{rate:,} Hz" in e.value.message
        assert f"{work - 1:,} samples" in e.value.message


def test_the_default_work_budget_takes_4_hours_of_48_khz_stereo_at_the_default_hop():
    from soundclassifier.config import Settings
    from soundclassifier.timeline import window_count

    rate, budget = 48_000, Settings().max_timeline_work_samples
    win, hop = int(SETTINGS.clip_seconds * rate), int(SETTINGS.clip_seconds * rate / 2)
    assert window_count(4 * 3600 * rate, win, hop) * win * 2 <= budget
    # A minute at 192 kHz in 0.25-s hops, 8 channels: 1.8 G samples of work, within; 3 minutes are not.
    assert window_count(60 * 192_000, 5 * 192_000, 48_000) * 5 * 192_000 * 8 <= budget
    assert window_count(180 * 192_000, 5 * 192_000, 48_000) * 5 * 192_000 * 8 > budget


def test_odd_sample_rates_resample_to_the_right_length():
    # Rates coprime with 22050 Hz take a bounded approximate ratio (the exact one cost gigabytes;
    # tests/test_fuzz.py checks the server's memory).
    features = Features(FeatureSettings())
    for rate in (2003, 44101):
        wave = features.waveform(decode(af.encode(af.sine(300.0, 1.0, rate), rate, "WAV", "PCM_16")))
        assert abs(wave.shape[0] - 22050) <= 25  # 1 s of audio, within 0.1 %
