"""A live stream: 16-bit PCM arriving in frames, classified in sliding windows as it comes.

    with pipeline.listen(sample_rate=16000, hop_s=0.5) as session:   # validated, admitted
        async for message in session.run(frames):                    # frames: AsyncIterator[bytes]
            send(message)                                             # TimelineWindow | ListenEvent

Every front door (WebSocket /listen, gRPC Listen) adapts `run`: it turns its messages into PCM
frames and the messages back into its own; the rules live here. A session knows its pipeline only
by the three steps it is handed (`prepare`, `forward`, `count`), so the pipeline builds sessions
and this module never reaches back into it.

Windows are /timeline's: window `i` covers [i * hop, i * hop + window) of the stream at the
client's own rate and goes through the very feature path a timeline window takes (`Features` on
`Audio` at that rate: mono, resample, log-mel), so a stream and a timeline of the same samples
answer the same. (Resampling the stream as it arrives, with soxr's `ResampleStream`, would save
a little CPU but changes the samples near each window's edges: its windows differed from the
timeline's by up to 1.2 in standardised log-mel units per cell here, at 8, 16, 44.1 and 48 kHz.)

Memory per stream is bounded by the window, not by the stream: the buffer holds one window and one
hop of samples (float32 at the client's rate: 1 MiB at 48 kHz for a 5 s model), plus the frame
being read (SOUND_LISTEN_MAX_FRAME_KB) and the model inputs of at most
SOUND_LISTEN_MAX_PENDING_WINDOWS windows. A stream reads its next frame only once the windows of
the previous one are answered, so a client that sends faster than real time is slowed down by its
own transport (TCP, HTTP/2 flow control), never queued. Its work is bounded by its audio
(SOUND_MAX_TIMELINE_SECONDS) and, since every frame costs a hand-off to an engine thread however
few samples it holds, by its frames: past the first FREE_FRAMES they must carry
SOUND_LISTEN_MIN_FRAME_MS of audio on average (2-byte frames would otherwise buy hours of a core
for one stream).

Events: each window's probabilities and familiarity, optionally smoothed (per-class median, and
the familiarities' median, over `smoothing` windows centred on it), give the window a label; when
that label changes, an "end" event closes the previous label and a "start" event opens the new one
("unknown" is no event). A window stands for the hop-long stretch around its centre ([start +
(window - hop) / 2, start + (window + hop) / 2), the first from 0 and the last to the end of the
audio), so an event's times estimate where the sound began and ended, not where the first window
touching it began.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from soundclassifier.audio import Audio, pcm16_to_float32
from soundclassifier.config import LISTEN_FREE_FRAMES as FREE_FRAMES
from soundclassifier.errors import AudioError, ErrorKind, IdleError, LimitExceededError
from soundclassifier.options import ListenOptions
from soundclassifier.predictions import UNKNOWN, TimelineWindow, familiarity, label_of, softmax, top_k

if TYPE_CHECKING:
    from soundclassifier.classifier import Classifier
    from soundclassifier.config import Settings

Span = tuple[float, float]


class ListenEvent(BaseModel):
    event: Literal["start", "end"]
    label: str
    start_s: float = Field(description="where the label began (seconds from the start of the stream)")
    end_s: float | None = Field(None, description='where it ended ("end" events only)')


Message = TimelineWindow | ListenEvent


class ListenSession:
    """One live stream of one pipeline (see the module docstring). Made by `Pipeline.listen`,
    which has already validated the options and admitted the stream; leaving the `with` block
    calls `release`, which frees its place.

    Args:
        classifier: the model: its features, its windows' results and labels.
        settings: the limits of a stream (SOUND_LISTEN_*, SOUND_MAX_TIMELINE_SECONDS).
        opts: the client's options, validated.
        release: called once when the session closes.
        prepare: `await prepare(fn, *args)` runs CPU work (cutting windows, features) off the event loop.
        forward: `await forward(inputs)`: calibrated logits for model inputs, through the shared batcher.
        count: `count(windows, audio_seconds)`: what the stream classified, for the metrics.
    """

    def __init__(
        self,
        classifier: Classifier,
        settings: Settings,
        opts: ListenOptions,
        release: Callable[[], None],
        *,
        prepare: Callable[..., Awaitable[Any]],
        forward: Callable[[np.ndarray], Awaitable[np.ndarray]],
        count: Callable[[int, float], None],
    ):
        self.classifier, self.opts, self._release = classifier, opts, release
        self._prepare, self._forward, self._count = prepare, forward, count
        self.max_frame_bytes = settings.listen_max_frame_kb * 1024
        self.idle_s = settings.listen_idle_s
        self.min_frame_s = settings.listen_min_frame_ms / 1000
        self._frames = 0  # frames received, empty ones included
        # A stream is a timeline that arrives live: the same bound on its audio (and so its windows).
        self.max_seconds = settings.max_timeline_seconds
        self.max_pending = settings.listen_max_pending_windows
        rate = self.rate = opts.sample_rate
        self.window_s = classifier.settings.clip_seconds
        self.win = max(1, round(self.window_s * rate))  # as the timeline rounds (timeline.stream_windows)
        self.hop = max(1, round(opts.hop_s * rate))
        self._buffer = np.empty(self.win + self.hop, dtype=np.float32)
        self._first = 0  # stream index of _buffer[0]
        self._held = 0  # samples held in _buffer
        self._windows = 0  # windows classified so far: the next starts at _windows * hop
        self._events = _Events(classifier, opts, self.window_s)

    def __enter__(self) -> ListenSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    @property
    def received(self) -> int:
        """Samples received so far."""
        return self._first + self._held

    async def run(self, frames: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        """Messages for `frames` as they arrive: one window per hop once a window is full, and the
        events it decides. When `frames` ends, the rest: the last, shorter window (as /timeline
        ends) and the end of an open event. Raises AudioError for a frame that is not 16-bit PCM
        or is over the size limit, IdleError after `listen_idle_s` without audio, OverloadedError
        when the batcher refuses a window."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await anext(frames)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise IdleError(f"no audio for {self.idle_s:g} s: the stream is closed") from None
            self._count_frame()
            samples = self._samples(frame)
            if len(samples) == 0:  # keeps nothing alive: only audio resets the idle clock
                continue
            while len(samples):
                used, spans, inputs = await self._prepare(self._take, samples)
                samples = samples[used:]
                for message in await self._answer(spans, inputs):
                    yield message
            deadline = loop.time() + self.idle_s
        spans, inputs = await self._prepare(self._tail)
        for message in await self._answer(spans, inputs):
            yield message
        for event in self._events.finish(self.received / self.rate):
            yield event
        self._count(0, self.received / self.rate)

    # --- the steps ------------------------------------------------------------------------------

    def _count_frame(self) -> None:
        self._frames += 1
        seconds = self.received / self.rate  # before this frame: its own samples are not yet known
        if self._frames > FREE_FRAMES + seconds / self.min_frame_s:
            raise LimitExceededError(
                f"{self._frames:,} messages for {seconds:.2f} s of audio: send at least "
                f"{self.min_frame_s * 1000:g} ms of audio per message on average")

    def _samples(self, frame: bytes) -> np.ndarray:
        if len(frame) > self.max_frame_bytes:
            raise AudioError(ErrorKind.TOO_LARGE, f"a frame of {len(frame):,} bytes is over the limit of "
                                                  f"{self.max_frame_bytes:,} bytes")
        if len(frame) % 2:
            raise AudioError(ErrorKind.CORRUPT, f"a frame of {len(frame):,} bytes is not whole 16-bit samples "
                                                "(send little-endian 16-bit mono PCM)")
        samples = np.frombuffer(frame, dtype="<i2")
        if self.received + len(samples) > self.max_seconds * self.rate:
            raise AudioError(ErrorKind.TOO_LONG, f"the stream reached {self.max_seconds:g} s of audio, the limit of "
                                                 "one stream; open a new one")
        return samples

    def _take(self, samples: np.ndarray) -> tuple[int, list[Span], np.ndarray | None]:
        """Append samples until `max_pending` windows are complete (or the samples run out); the
        samples used, and the complete windows' spans and model inputs. Runs on an engine thread."""
        used, spans, inputs = 0, [], []
        while used < len(samples) and len(spans) < self.max_pending:
            start = self._windows * self.hop
            if self._held == len(self._buffer):  # full: drop what precedes the next window
                drop = start - self._first
                self._buffer[: self._held - drop] = self._buffer[drop : self._held]
                self._first, self._held = start, self._held - drop
            end = start + self.win
            n = min(len(samples) - used, end - self.received, len(self._buffer) - self._held)
            self._buffer[self._held : self._held + n] = pcm16_to_float32(samples[used : used + n])
            self._held, used = self._held + n, used + n
            if self.received == end:
                spans.append((start / self.rate, end / self.rate))
                inputs.append(self._features(start, end))
                self._windows += 1
        return used, spans, np.stack(inputs) if inputs else None

    def _tail(self) -> tuple[list[Span], np.ndarray | None]:
        """The last window, shorter than the others, when audio arrived after the last full one
        ended (or no window was ever full): /timeline's last window (padded by the features)."""
        start = self._windows * self.hop
        last_end = start - self.hop + self.win if self._windows else 0
        if self.received <= last_end:
            return [], None
        return [(start / self.rate, self.received / self.rate)], self._features(start, self.received)[None]

    def _features(self, start: int, end: int) -> np.ndarray:
        window = self._buffer[start - self._first : end - self._first]
        return np.asarray(self.classifier.features(Audio(window[None], self.rate, "PCM")))

    async def _answer(self, spans: list[Span], inputs: np.ndarray | None) -> list[Message]:
        if inputs is None:
            return []
        z = await self._forward(inputs)
        self._count(len(spans), 0.0)
        messages: list[Message] = []
        for window, row in zip(self.classifier.windows(spans, z, self.opts), z, strict=True):
            messages.append(window)
            messages.extend(self._events.add(window.start_s, row))
        return messages


class _Events:
    """Labels of windows, smoothed, turned into start / end events (see the module docstring)."""

    def __init__(self, classifier, opts: ListenOptions, window_s: float):
        self.labels, self.rule = classifier.labels, classifier.unknown_rule(opts)
        self.before = (opts.smoothing - 1) // 2  # windows before the centre in a median
        self.after = opts.smoothing - 1 - self.before
        self.hop, self.window_s = opts.hop_s, window_s
        self.recent: deque[tuple[np.ndarray, float]] = deque(maxlen=opts.smoothing)  # (probabilities, familiarity)
        self.starts: deque[float] = deque(maxlen=self.after + 1)  # start_s of windows not yet decided
        self.current, self.since = UNKNOWN, 0.0
        self.decided = 0

    def add(self, start_s: float, z: np.ndarray) -> list[ListenEvent]:
        """The events a window's calibrated logits `z` settle (its own or an earlier window's)."""
        self.recent.append((softmax(z), float(familiarity(z))))
        self.starts.append(start_s)
        if len(self.starts) <= self.after:  # the centre window still waits for its later neighbours
            return []
        return self._decide(self.starts.popleft(), list(self.recent))

    def finish(self, end_s: float) -> list[ListenEvent]:
        events = []
        while self.starts:  # the last windows: medians over the neighbours they have
            later = len(self.starts) - 1
            events += self._decide(self.starts.popleft(),
                                   list(self.recent)[-(self.before + 1 + later):])
        if self.current != UNKNOWN:
            events.append(ListenEvent(event="end", label=self.current, start_s=self.since, end_s=round(end_s, 4)))
        self.current = UNKNOWN
        return events

    def _decide(self, start_s: float, recent: list[tuple[np.ndarray, float]]) -> list[ListenEvent]:
        probs, fam = recent[0] if len(recent) == 1 else (np.median(np.stack([p for p, _ in recent]), axis=0),
                                                          float(np.median([f for _, f in recent])))
        label = label_of(top_k(probs, self.labels, 1), fam, self.rule)
        # The stretch this window stands for begins here (the first one at the stream's start).
        at = 0.0 if self.decided == 0 else round(start_s + (self.window_s - self.hop) / 2, 4)
        self.decided += 1
        if label == self.current:
            return []
        events = []
        if self.current != UNKNOWN:
            events.append(ListenEvent(event="end", label=self.current, start_s=self.since, end_s=at))
        if label != UNKNOWN:
            events.append(ListenEvent(event="start", label=label, start_s=at))
        self.current, self.since = label, at
        return events
