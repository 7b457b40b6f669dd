"""Audio files built in memory, good and bad, for decoder, core and front-door tests.

Every function returns the bytes of a whole file (nothing touches the disk). Good files are a sine
or white noise written by soundfile (libsndfile); bad files are built to trip one specific check of
`soundclassifier.audio.decode`. Import them from any test:

    from testkit.audiofiles import wav_sine, truncated_wav
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

RATE = 22050


# --- signals ------------------------------------------------------------------------------------


def sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    """A mono sine as float32 samples of shape (frames,)."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    """Mono white noise in [-amplitude, amplitude] as float32 samples of shape (frames,)."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.uniform(-1, 1, round(seconds * rate))).astype(np.float32)


def encode(samples: np.ndarray, rate: int = RATE, format: str = "WAV", subtype: str | None = None) -> bytes:
    """Write samples ((frames,) or (frames, channels)) as a file of `format`/`subtype`; return its bytes."""
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=format, subtype=subtype)
    return buf.getvalue()


# --- good files ---------------------------------------------------------------------------------


def wav_sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE, channels: int = 1) -> bytes:
    """16-bit PCM WAV of a sine, the same signal on every channel."""
    x = sine(freq, seconds, rate)
    return encode(np.repeat(x[:, None], channels, axis=1), rate, "WAV", "PCM_16")


def wav_noise(seconds: float = 1.0, rate: int = RATE, seed: int = 0) -> bytes:
    """16-bit PCM WAV of white noise."""
    return encode(noise(seconds, rate, seed=seed), rate, "WAV", "PCM_16")


def flac_sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE) -> bytes:
    """16-bit FLAC of a sine."""
    return encode(sine(freq, seconds, rate), rate, "FLAC", "PCM_16")


def ogg_vorbis_sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE) -> bytes:
    """OGG/Vorbis of a sine."""
    return encode(sine(freq, seconds, rate), rate, "OGG", "VORBIS")


def ogg_opus_sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = 48000) -> bytes:
    """OGG/Opus of a sine (Opus only runs at 8, 12, 16, 24 or 48 kHz)."""
    return encode(sine(freq, seconds, rate), rate, "OGG", "OPUS")


def mp3_sine(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE) -> bytes:
    """MPEG layer III of a sine."""
    return encode(sine(freq, seconds, rate), rate, "MP3", "MPEG_LAYER_III")


def wav_8bit(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE) -> bytes:
    """Unsigned 8-bit PCM WAV of a sine."""
    return encode(sine(freq, seconds, rate), rate, "WAV", "PCM_U8")


def wav_192k(freq: float = 1000.0, seconds: float = 1.0) -> bytes:
    """24-bit WAV at 192 kHz (studio rate; must be resampled down)."""
    return encode(sine(freq, seconds, 192000), 192000, "WAV", "PCM_24")


def wav_32_channels(freq: float = 1000.0, seconds: float = 1.0, rate: int = RATE) -> bytes:
    """16-bit WAV with 32 channels (a microphone array); channel k carries the sine times (k+1)/32."""
    x = sine(freq, seconds, rate)
    gains = (np.arange(32) + 1) / 32
    return encode(x[:, None] * gains[None, :].astype(np.float32), rate, "WAV", "PCM_16")


def wav_silence(seconds: float = 1.0, rate: int = RATE) -> bytes:
    """16-bit WAV of digital silence (all zeros)."""
    return encode(np.zeros(round(seconds * rate), np.float32), rate, "WAV", "PCM_16")


# --- bad files ----------------------------------------------------------------------------------


def empty() -> bytes:
    """Zero bytes."""
    return b""


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    """`n` random bytes: no audio container at all."""
    return np.random.default_rng(seed).bytes(n)


def text() -> bytes:
    """A plain-text file that someone uploaded by mistake."""
    return b"This is a shopping list, not a sound.\nmilk\neggs\n" * 20


def zero_frame_wav(rate: int = RATE) -> bytes:
    """A well-formed WAV whose data chunk is empty (0 frames, header says so)."""
    return encode(np.zeros(0, np.float32), rate, "WAV", "PCM_16")


def header_only_wav(seconds: float = 1.0, rate: int = RATE) -> bytes:
    """The 44-byte header of a 16-bit WAV announcing `seconds` of audio, with none of the data."""
    return wav_sine(seconds=seconds, rate=rate)[:44]


def truncated_wav(seconds: float = 1.0, rate: int = RATE, keep: float = 0.5) -> bytes:
    """A 16-bit WAV cut after `keep` of its bytes; its header still announces the full length."""
    data = wav_sine(seconds=seconds, rate=rate)
    return data[: int(len(data) * keep)]


def truncated_flac(seconds: float = 1.0, rate: int = RATE, keep: float = 0.5) -> bytes:
    """A FLAC cut after `keep` of its bytes (a frame is broken off mid-way)."""
    data = flac_sine(seconds=seconds, rate=rate)
    return data[: int(len(data) * keep)]


def nan_float_wav(seconds: float = 0.1, rate: int = RATE) -> bytes:
    """32-bit float WAV whose samples are a sine with a NaN in the middle."""
    x = sine(seconds=seconds, rate=rate)
    x[len(x) // 2] = np.nan
    return encode(x, rate, "WAV", "FLOAT")


def inf_float_wav(seconds: float = 0.1, rate: int = RATE) -> bytes:
    """32-bit float WAV whose samples are a sine with +inf in the middle."""
    x = sine(seconds=seconds, rate=rate)
    x[len(x) // 2] = np.inf
    return encode(x, rate, "WAV", "FLOAT")


def gigabyte_header_wav(seconds: float = 0.1, rate: int = RATE, claimed_bytes: int = 0x7FFF0000) -> bytes:
    """A small 16-bit WAV whose RIFF and data sizes claim ~2 GB: a decoder must not trust them."""
    data = bytearray(wav_sine(seconds=seconds, rate=rate))
    assert data[36:40] == b"data", "soundfile wrote an unexpected WAV header layout"
    data[4:8] = struct.pack("<I", claimed_bytes + 36)
    data[40:44] = struct.pack("<I", claimed_bytes)
    return bytes(data)
