"""Decoding uploaded or stored audio into float32 samples, strictly.

Every way a file can be unusable ends in one exception type, `AudioError`, whose `kind` says what
went wrong and whose message is written for the person who sent the file. Front doors map the kind
to a status code (serving/errors.py); nothing here knows about HTTP or gRPC.

soundfile (libsndfile) decodes WAV, FLAC, OGG/Vorbis, OGG/Opus and MP3; torchaudio.load is not used
because it needs FFmpeg.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from soundclassifier.errors import AudioError, ErrorKind

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 192_000
"""Sample rates we decode; a header may claim anything (a 10 MHz WAV is 44 bytes). Every clip is
resampled to the model's rate (22.05 kHz by default), so audio above 192 kHz (the highest rate
of studio formats) carries nothing the model hears and costs its rate in decoding and resampling
work: a 768 kHz timeline took 41 ms per window where 22 kHz takes 3. It is refused, naming its
rate, rather than resampled at that cost."""

SUPPORTED_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3", "AIFF")
"""libsndfile container formats we accept. MP3 is reported by libsndfile as "MP3" or "MPEG"."""


Source = bytes | str | Path | BinaryIO
"""A file to decode: its bytes, a path, or a seekable binary file object (read where it lies:
an upload spooled to disk is not copied)."""


@dataclass(frozen=True)
class Audio:
    """Decoded audio. `samples` is float32 of shape (channels, frames), values nominally in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    format: str

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    @property
    def frames(self) -> int:
        return self.samples.shape[1]

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class Limits:
    """What the decoder refuses, before decoding. None means no limit (training reads trusted
    local files).

    max_bytes: size of the file. max_seconds: its announced duration. max_samples: samples
    (frames x channels) decoded at once: the whole file for a clip, one window for a timeline;
    a few kilobytes of FLAC can announce minutes of 192 kHz x 8 channels, so seconds alone do not
    bound memory. max_windows: windows of one timeline (each costs a forward pass).
    max_work_samples: samples (frames x channels, at the file's own rate) a file read in
    overlapping blocks hands out in all, each block counted whole: a timeline's decoding and
    resampling work, which grows with the rate, the channels and the overlap of its windows, not
    with their number alone (checked by `_OwningSoundFile.blocks` before the first block)."""

    max_bytes: int | None = None
    max_seconds: float | None = None
    max_samples: int | None = None
    max_windows: int | None = None
    max_work_samples: int | None = None

    def check_samples(self, frames: int, channels: int, what: str) -> None:
        if self.max_samples is not None and frames * channels > self.max_samples:
            raise AudioError(
                ErrorKind.TOO_LARGE,
                f"{what} decodes to {frames * channels:,} samples ({frames:,} frames x {channels} channels); "
                f"the limit is {self.max_samples:,} samples.",
            )

    def check_work(self, blocks: int, block_frames: int, channels: int, rate: int) -> None:
        """Refuse `blocks` reads of `block_frames` frames over the work budget."""
        work = blocks * block_frames * channels
        if self.max_work_samples is not None and work > self.max_work_samples:
            raise AudioError(
                ErrorKind.TOO_LARGE,
                f"The recording's {blocks:,} windows of {block_frames:,} frames x {channels} channels at "
                f"{rate:,} Hz make {work:,} samples to decode and resample; the limit is "
                f"{self.max_work_samples:,} samples (send a larger hop_s, a lower sample rate, fewer "
                f"channels or a shorter recording).",
            )


NO_LIMITS = Limits()


# libsndfile writes a parse log while opening a WAV; "data : 44100 (should be 22028)" means the header
# promises more audio than the file holds, which libsndfile would otherwise quietly accept as a
# shorter clip. Streaming writers (ffmpeg to a pipe) leave the size at 0xFFFFFFFF: not truncation.
_DATA_SIZE_LOG = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M)
_STREAMING_SIZE = 0xFFFFFFF0


def decode(source: Source, limits: Limits = NO_LIMITS) -> Audio:
    """Decode a whole file (bytes or a path) into `Audio`, or raise `AudioError`: `BlockDecoder`
    with the whole file as its one block, so both make the same checks."""
    clip = BlockDecoder(source, limits, block_frames=-1)
    (samples,) = clip  # checked: not empty, finite, not truncated
    return Audio(samples=np.ascontiguousarray(samples.T), sample_rate=clip.sample_rate, format=clip.format)


_PCM16_SCALE = np.float32(1 / 32768)
EMPTY_MESSAGE = "The file is valid audio but contains no samples."
NON_FINITE_MESSAGE = "The audio contains NaN or infinite sample values; it cannot be classified."
BLOCK_FRAMES = 1 << 18  # 5.9 s at 44.1 kHz: a usual clip is one block


def _read_float32(f: sf.SoundFile, frames: int = -1) -> np.ndarray:
    """The next `frames` frames (-1: all) as float32 (frames, channels), scaled as libsndfile scales them."""
    if f.subtype == "PCM_16":
        # libsndfile copies 16-bit PCM into an int16 buffer as it is, but converts to float through
        # a small staging buffer: 0.45 ms per 5 s clip here against 0.1 ms for this, same values.
        return pcm16_to_float32(f.read(frames, dtype="int16", always_2d=True))
    return f.read(frames, dtype="float32", always_2d=True)


@dataclass(frozen=True)
class AudioInfo:
    """What a clip was, once decoded: its rate, the frames read, its format."""

    sample_rate: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


class BlockDecoder:
    """A clip decoded a block at a time: iterate for float32 (frames, channels) blocks of at most
    `block_frames` (memory holds one), then `info()`. The samples budget
    bounds the clip's whole decoding work, as in `decode`; errors are `AudioError`s, raised
    while iterating for what only the samples show (damaged, truncated, non-finite, empty)."""

    def __init__(self, source: Source, limits: Limits = NO_LIMITS, block_frames: int = BLOCK_FRAMES):
        self._block_frames = block_frames  # -1: the whole file in one block
        self._file = open_checked(source, limits)
        try:
            limits.check_samples(self._file.frames, self._file.channels, "The audio")
        except AudioError:
            self._file.close()
            raise
        self.sample_rate, self.format = self._file.samplerate, self._file.format
        self._frames = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        with self._file as f:
            announced = f.frames
            while True:
                try:
                    block = _read_float32(f, self._block_frames)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioError(ErrorKind.CORRUPT, f"The audio file is damaged or truncated ({e}).") from None
                if not len(block):
                    break
                if not np.isfinite(block).all():
                    raise AudioError(ErrorKind.NON_FINITE, NON_FINITE_MESSAGE)
                self._frames += len(block)
                yield block
        if self._frames == 0:
            raise AudioError(ErrorKind.EMPTY, EMPTY_MESSAGE)
        if self._frames < announced and self.format not in ("MP3", "MPEG"):
            raise AudioError(
                ErrorKind.CORRUPT,
                f"The file is truncated: its header announces {announced} frames "
                f"but only {self._frames} could be read.",
            )

    def info(self) -> AudioInfo:
        return AudioInfo(self.sample_rate, self._frames, self.format)


def pcm16_to_float32(samples: np.ndarray) -> np.ndarray:
    """16-bit PCM samples (int16, any shape) as float32, scaled as libsndfile scales them (/ 32768):
    a live stream's PCM becomes the same floats as the same samples read from a 16-bit WAV."""
    return np.multiply(samples, _PCM16_SCALE, dtype=np.float32)


def open_checked(source: Source, limits: Limits = NO_LIMITS) -> sf.SoundFile:
    """Open a file (bytes, or a path read from disk as it is decoded) after the size check, and
    check its announced duration before any sample is decoded."""
    if isinstance(source, (str, Path)):
        size = Path(source).stat().st_size
    elif isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    else:
        size = source.seek(0, io.SEEK_END)
    if size == 0:
        raise AudioError(ErrorKind.EMPTY, "The upload is empty (0 bytes).")
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise AudioError(
            ErrorKind.TOO_LARGE, f"The file is {size:,} bytes; the limit is {limits.max_bytes:,} bytes."
        )
    f = open_sound(source)
    f.limits = limits
    seconds = f.frames / f.samplerate
    if limits.max_seconds is not None and seconds > limits.max_seconds:
        f.close()
        raise AudioError(
            ErrorKind.TOO_LONG, f"The audio is {seconds:.1f} s long; the limit is {limits.max_seconds:g} s."
        )
    return f


class _OwningSoundFile(sf.SoundFile):
    """A SoundFile that closes the file object it reads from when it is closed, and holds the
    limits it was opened with (`open_checked`) to bound the work of overlapping reads."""

    def __init__(self, stream):
        self._stream = stream
        self.limits = NO_LIMITS
        super().__init__(stream)

    def blocks(self, blocksize=None, overlap=0, frames=-1, *args, **kwargs):
        """soundfile's blocks, refused before the first one when the blocks the rest of the file
        makes (each counted whole: overlapping windows are resampled one by one) exceed the work
        budget. (A clip is read in plain reads, bounded by `max_samples`.)"""
        if blocksize:
            left = self.frames - self.tell() if frames < 0 else frames
            hop = blocksize - overlap
            count = 1 if left <= blocksize else -(-(left - blocksize) // hop) + 1
            self.limits.check_work(count, blocksize, self.channels, self.samplerate)
        yield from super().blocks(blocksize, overlap, frames, *args, **kwargs)

    def close(self) -> None:
        super().close()
        self._stream.close()


def open_sound(source: Source) -> sf.SoundFile:
    """Open bytes, a path or a file object as a seekable libsndfile handle (which closes it when
    closed), mapping every failure to `AudioError`."""
    # A path is opened as a file object, not by name: libsndfile takes a name's extension as a
    # format hint, so the same bytes saved as x.mp3 or x.bin would get different errors.
    if isinstance(source, (str, Path)):
        stream = open(source, "rb")  # noqa: SIM115
    elif isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(source)
    else:
        stream = source
        stream.seek(0)
    try:
        f = _OwningSoundFile(stream)
    except sf.LibsndfileError as e:
        stream.close()
        raise _error_from_libsndfile(str(e.error_string)) from None
    except (RuntimeError, TypeError, ValueError) as e:  # soundfile raises these for odd headers
        stream.close()
        raise AudioError(ErrorKind.NOT_AUDIO, f"This is not a readable audio file ({e}).") from None
    if f.format not in SUPPORTED_FORMATS and f.format != "MPEG":
        f.close()
        raise AudioError(
            ErrorKind.UNSUPPORTED,
            f"{f.format_info} files are not supported; send WAV, FLAC, OGG or MP3.",
        )
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        rate = f.samplerate
        f.close()
        raise AudioError(
            ErrorKind.UNSUPPORTED,
            f"A sample rate of {rate:,} Hz is not supported; "
            f"send audio sampled at {MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz.",
        )
    if _is_truncated_wav(f):
        f.close()
        raise AudioError(
            ErrorKind.CORRUPT,
            "The file is truncated: its header announces more audio data than the file contains.",
        )
    if f.frames <= 0 or f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise AudioError(ErrorKind.EMPTY, EMPTY_MESSAGE)
    return f


def _is_truncated_wav(f: sf.SoundFile) -> bool:
    if f.format not in ("WAV", "WAVEX"):
        return False
    m = _DATA_SIZE_LOG.search(f.extra_info)
    return bool(m) and _STREAMING_SIZE > int(m.group(1)) > int(m.group(2))


def as_audio(samples: np.ndarray, rate: int, fmt: str) -> Audio:
    """Wrap (channels, frames) samples as `Audio`, refusing empty or non-finite ones."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.shape[1] == 0:
        raise AudioError(ErrorKind.EMPTY, EMPTY_MESSAGE)
    if not np.isfinite(samples).all():
        raise AudioError(ErrorKind.NON_FINITE, NON_FINITE_MESSAGE)
    return Audio(samples=samples, sample_rate=int(rate), format=fmt)


def _error_from_libsndfile(message: str) -> AudioError:
    lowered = message.lower()
    if "unsupported" in lowered or "not supported" in lowered or "codec" in lowered:
        return AudioError(ErrorKind.UNSUPPORTED, f"The audio encoding is not supported ({message}).")
    if "format not recognised" in lowered or "unknown format" in lowered:
        return AudioError(
            ErrorKind.NOT_AUDIO,
            "This is not an audio file we can read; send WAV, FLAC, OGG or MP3.",
        )
    return AudioError(ErrorKind.CORRUPT, f"The audio file is damaged or truncated ({message}).")
