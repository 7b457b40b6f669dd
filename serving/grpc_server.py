"""The gRPC front door (soundclassifier.v1), served from every BentoML worker beside HTTP.

BentoML 1.4's new-style services have no gRPC of their own, so this is a plain grpc.aio server
started by the service's startup hook on the worker's event loop. It calls the same pipeline as
the HTTP routes, so gRPC and HTTP requests share decoding, features and the adaptive batcher (one
forward pass can hold both), and the same arguments with the same bounds (a proto3 zero or unset
field means "not given": the default).

Status codes (serving/errors.py):
    INVALID_ARGUMENT    the audio is empty, not audio, corrupt, unsupported or has NaN/Inf;
                        an argument out of its bounds
    RESOURCE_EXHAUSTED  the upload exceeds the size limit (also grpc's own message size limit); a
                        live stream's messages carry too little audio (SOUND_LISTEN_MIN_FRAME_MS);
                        the worker already runs SOUND_GRPC_MAX_CALLS calls (serving/grpc_edge.py)
    OUT_OF_RANGE        the audio is longer than the duration limit
    UNAVAILABLE         the server is overloaded (or has its limit of live streams): retry with back-off
    DEADLINE_EXCEEDED   a live stream sent no audio for SOUND_LISTEN_IDLE_S
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from serving.errors import CLIENT_ERRORS, STREAM_ERRORS, grpc_status
from serving.grpc_edge import CallBudget, grpc_limits
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from soundclassifier.listen import ListenEvent, Message
from soundclassifier.pipeline import Pipeline
from soundclassifier.predictions import Classification, LabelScore, Timeline, TimelineWindow

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SoundClassifier"].full_name
LISTEN_METHOD = f"/{SERVICE_NAME}/Listen"
T = TypeVar("T")


def _scores(top: list[LabelScore]) -> list[pb.LabelScore]:
    return [pb.LabelScore(label=s.label, probability=s.probability) for s in top]


def _classification(c: Classification) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(model=c.model, duration_s=c.duration_s, sample_rate=c.sample_rate,
                               label=c.label, top=_scores(c.top))


def _window(w: TimelineWindow) -> pb.TimelineWindow:
    return pb.TimelineWindow(start_s=w.start_s, end_s=w.end_s, label=w.label, top=_scores(w.top))


def _listened(m: Message) -> pb.ListenResponse:
    if isinstance(m, ListenEvent):
        return pb.ListenResponse(event=pb.ListenEvent(event=m.event, label=m.label, start_s=m.start_s, end_s=m.end_s))
    return pb.ListenResponse(window=_window(m))


def _timeline(t: Timeline) -> pb.TimelineResponse:
    return pb.TimelineResponse(
        model=t.model, duration_s=t.duration_s, sample_rate=t.sample_rate, window_s=t.window_s, hop_s=t.hop_s,
        windows=[_window(w) for w in t.windows],
        summary=[pb.LabelSpan(label=s.label, start_s=s.start_s, end_s=s.end_s) for s in t.summary],
    )


class SoundClassifierServicer(pb_grpc.SoundClassifierServicer):
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.max_bytes = pipeline.settings.clip_limits.max_bytes
        self.max_timeline_bytes = pipeline.settings.timeline_limits.max_bytes

    async def _gather(self, chunks: AsyncIterator, limit: int, context: grpc.aio.ServicerContext, sink) -> Any:
        """Write a stream's chunks to `sink` (bytes in memory, or a file on disk), bounded in bytes
        (messages per stream and idle time: `CallBudget`); the first chunk."""
        first, size = None, 0
        async for chunk in chunks:
            first = first or chunk
            size += len(chunk.data)
            if size > limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"too_large: the upload exceeds the limit of {limit:,} bytes."
                )
            sink.write(chunk.data)
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty: the stream carried no chunks.")
        return first

    async def _run(self, call: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
        try:
            return await call
        except CLIENT_ERRORS as e:
            await context.abort(*grpc_status(e))

    def _options(self, message) -> dict:
        return {"top_k": message.top_k or None,
                "min_confidence": message.min_confidence if message.HasField("min_confidence") else None}

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:  # noqa: N802
        call = self.pipeline.classify(request.audio, endpoint="grpc", **self._options(request))
        return _classification(await self._run(call, context))

    async def ClassifyStream(self, request_iterator, context) -> pb.ClassifyResponse:  # noqa: N802
        buffer = io.BytesIO()  # a clip: bounded by the clip limit
        first = await self._gather(request_iterator, self.max_bytes, context, buffer)
        call = self.pipeline.classify(buffer.getvalue(), endpoint="grpc", **self._options(first))
        return _classification(await self._run(call, context))

    async def Timeline(self, request_iterator, context) -> pb.TimelineResponse:  # noqa: N802
        # A recording may be long: it goes to disk, where the timeline reads it a window at a time.
        with tempfile.NamedTemporaryFile(prefix="sound-grpc-timeline-") as spool:
            first = await self._gather(request_iterator, self.max_timeline_bytes, context, spool)
            spool.flush()
            call = self.pipeline.timeline(Path(spool.name), hop_s=first.hop_s or None, **self._options(first))
            return _timeline(await self._run(call, context))

    async def Listen(self, request_iterator, context):  # noqa: N802
        first = await anext(request_iterator, None)
        if first is None:
            return
        options = {**self._options(first), "sample_rate": first.sample_rate or None, "hop_s": first.hop_s or None,
                   "smoothing": first.smoothing or None}

        async def frames():
            yield first.pcm
            async for message in request_iterator:
                yield message.pcm

        try:
            with self.pipeline.listen(**options) as session:
                async for message in session.run(frames()):
                    yield _listened(message)
        except STREAM_ERRORS as e:
            await context.abort(*grpc_status(e))

    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:  # noqa: N802
        info = self.pipeline.describe()
        return pb.InfoResponse(
            model=info.model,
            labels=info.labels,
            feature_settings_json=json.dumps(info.feature_settings),
            metrics_json=json.dumps(info.metrics),
            engine=info.engine,
            precision=info.precision,
            info_json=info.model_dump_json(),
        )


async def start_grpc_server(pipeline: Pipeline, port: int, host: str = "0.0.0.0") -> grpc.aio.Server:
    """Start serving on `host:port`; health reports SERVING (the model is loaded by now)."""
    # A unary Classify carries the whole file in one message: allow the upload limit plus room
    # for the envelope. Streams are bounded by the same limits chunk by chunk.
    limits = grpc_limits(pipeline.settings)
    server = grpc.aio.server(
        # Idle streams, messages per stream and wall time per call: grpc has no option for them.
        # Listen's messages are counted by the core against its audio (soundclassifier/listen.py).
        interceptors=[CallBudget(limits, self_counted={LISTEN_METHOD})],
        # The call cap is CallBudget's (exact, answered with a message); grpc's own counts a call
        # until after its answer has left, so it is only a backstop here (serving/grpc_edge.py).
        maximum_concurrent_rpcs=limits.transport_streams,
        options=[
            ("grpc.max_receive_message_length", pipeline.settings.clip_limits.max_bytes + (1 << 20)),
            ("grpc.max_send_message_length", 64 << 20),
            # Every worker process binds the port; the kernel spreads connections among them.
            ("grpc.so_reuseport", 1),
            *limits.server_options(),  # idle connections, handshake, streams per connection, metadata
        ],
    )
    pb_grpc.add_SoundClassifierServicer_to_server(SoundClassifierServicer(pipeline), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
