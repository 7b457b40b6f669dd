"""Sliding windows over a long recording, read as a stream so memory stays bounded.

An hour of 44.1 kHz stereo is 1.3 GB as float32; instead of decoding it whole, the file (read
from disk when given as a path, as uploads are) is decoded one window at a time (soundfile's `blocks` with overlap), and each window goes through exactly
the feature path a short clip sent to /classify would take. Window `i` covers
[i * hop, i * hop + window) seconds, the last one ends at the end of the file (and is padded).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from soundclassifier.audio import NO_LIMITS, Audio, Limits, Source, as_audio, open_checked
from soundclassifier.errors import AudioError, ErrorKind
from soundclassifier.features import FeatureSettings

MIN_HOP_S = 0.25
"""Smallest hop between windows: each window costs a forward pass, so the hop bounds the work one
request can ask for (4 windows per second of audio at most)."""


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    audio: Audio  # the window's samples at the file's own rate


@dataclass(frozen=True)
class Stream:
    duration_s: float
    sample_rate: int
    windows: Iterator[Window]


def stream_windows(
    source: Source,
    settings: FeatureSettings,
    hop_s: float,
    limits: Limits = NO_LIMITS,
) -> Stream:
    """Open `source` and return its duration plus a lazy iterator of windows `hop_s` apart
    (checked by `soundclassifier.options.TimelineOptions`)."""
    window_s = settings.clip_seconds
    f = open_checked(source, limits)
    rate, frames = f.samplerate, f.frames
    duration = frames / rate
    win = max(1, round(window_s * rate))
    hop = max(1, round(hop_s * rate))
    try:
        limits.check_samples(win, f.channels, "One window of the audio")
        count = window_count(frames, win, hop)
        if limits.max_windows is not None and count > limits.max_windows:
            raise AudioError(
                ErrorKind.TOO_LONG,
                f"The recording makes {count:,} windows at a hop of {hop_s:g} s; the limit is "
                f"{limits.max_windows:,} windows (send a larger hop_s or a shorter recording).",
            )
    except AudioError:
        f.close()
        raise

    def windows() -> Iterator[Window]:
        with f:
            start = 0
            try:
                for block in f.blocks(blocksize=win, overlap=win - hop, dtype="float32", always_2d=True):
                    yield Window(start / rate, (start + len(block)) / rate, as_audio(block.T, rate, f.format))
                    if start + len(block) >= frames:
                        return
                    start += hop
            except (RuntimeError, ValueError) as e:
                if isinstance(e, AudioError):
                    raise
                raise AudioError(ErrorKind.CORRUPT, f"The audio file is damaged ({e}).") from None

    return Stream(duration_s=duration, sample_rate=rate, windows=windows())


def window_count(frames: int, win: int, hop: int) -> int:
    """Windows `stream_windows` yields: one per hop until a window reaches the end."""
    return 1 if frames <= win else -(-(frames - win) // hop) + 1
