"""The gRPC front door (soundclassifier.v1), served from every BentoML worker beside HTTP.

BentoML 1.4's new-style services have no gRPC of their own, so this is a plain grpc.aio server
started by the service's startup hook on the worker's event loop. It calls the same service
methods as the HTTP routes, so gRPC and HTTP requests share decoding, features and the adaptive
batcher (one forward pass can hold both).

Status codes:
    INVALID_ARGUMENT    the audio is empty, not audio, corrupt, unsupported or has NaN/Inf;
                        top_k or hop_s out of range
    RESOURCE_EXHAUSTED  the upload exceeds the size limit (also grpc's own message size limit)
    OUT_OF_RANGE        the audio is longer than the duration limit
    UNAVAILABLE         the server is overloaded: retry with back-off
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from soundclassifier.audio import AudioError, ErrorKind
from soundclassifier.batching import OverloadedError
from soundclassifier.predictions import Classification, LabelScore, Timeline
from soundclassifier.timeline import MIN_HOP_S

if TYPE_CHECKING:
    from service import SoundClassifier

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SoundClassifier"].full_name
_STATUS = {
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TOO_LONG: grpc.StatusCode.OUT_OF_RANGE,
}


def _scores(top: list[LabelScore]) -> list[pb.LabelScore]:
    return [pb.LabelScore(label=s.label, probability=s.probability) for s in top]


def _classification(c: Classification) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(model=c.model, duration_s=c.duration_s, sample_rate=c.sample_rate, top=_scores(c.top))


def _timeline(t: Timeline) -> pb.TimelineResponse:
    return pb.TimelineResponse(
        model=t.model, duration_s=t.duration_s, sample_rate=t.sample_rate, window_s=t.window_s, hop_s=t.hop_s,
        windows=[pb.TimelineWindow(start_s=w.start_s, end_s=w.end_s, top=_scores(w.top)) for w in t.windows],
        summary=[pb.LabelSpan(label=s.label, start_s=s.start_s, end_s=s.end_s) for s in t.summary],
    )


class SoundClassifierServicer(pb_grpc.SoundClassifierServicer):
    def __init__(self, service: SoundClassifier, max_top_k: int, max_bytes: int, max_timeline_bytes: int):
        self.service, self.max_top_k = service, max_top_k
        self.max_bytes, self.max_timeline_bytes = max_bytes, max_timeline_bytes

    async def _top_k(self, requested: int, default: int, context: grpc.aio.ServicerContext) -> int:
        k = requested or default
        if not 1 <= k <= self.max_top_k:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be between 1 and {self.max_top_k}")
        return k

    async def _gather(self, chunks: AsyncIterator, limit: int, context: grpc.aio.ServicerContext):
        first, data = None, bytearray()
        async for chunk in chunks:
            first = first or chunk
            data += chunk.data
            if len(data) > limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"The upload exceeds the limit of {limit:,} bytes."
                )
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The stream carried no chunks.")
        return first, bytes(data)

    async def _run(self, call, context: grpc.aio.ServicerContext):
        try:
            return await call
        except AudioError as e:
            await context.abort(_STATUS.get(e.kind, grpc.StatusCode.INVALID_ARGUMENT), f"{e.kind.value}: {e.message}")
        except OverloadedError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"overloaded: {e}")

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:  # noqa: N802
        k = await self._top_k(request.top_k, 5, context)
        result = await self._run(self.service.classify_bytes(request.audio, k, "grpc"), context)
        return _classification(result)

    async def ClassifyStream(self, request_iterator, context) -> pb.ClassifyResponse:  # noqa: N802
        first, data = await self._gather(request_iterator, self.max_bytes, context)
        k = await self._top_k(first.top_k, 5, context)
        return _classification(await self._run(self.service.classify_bytes(data, k, "grpc"), context))

    async def Timeline(self, request_iterator, context) -> pb.TimelineResponse:  # noqa: N802
        first, data = await self._gather(request_iterator, self.max_timeline_bytes, context)
        k = await self._top_k(first.top_k, 3, context)
        window = self.service.core.settings.clip_seconds
        hop = first.hop_s or None
        if hop is not None and not MIN_HOP_S <= hop <= window:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hop_s must be between {MIN_HOP_S:g} and {window:g}")
        return _timeline(await self._run(self.service.timeline_of(data, hop, k), context))

    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:  # noqa: N802
        core, meta = self.service.core, self.service.core.model.metadata
        return pb.InfoResponse(
            model=core.tag,
            labels=core.labels,
            feature_settings_json=core.settings.model_dump_json(),
            metrics_json=json.dumps(meta.get("metrics", {})),
            engine=core.engine.name,
            precision=core.engine.precision,
        )


async def start_grpc_server(
    service: SoundClassifier, port: int, *, max_top_k: int, max_bytes: int, max_timeline_bytes: int,
    host: str = "0.0.0.0",
) -> grpc.aio.Server:
    """Start serving on `host:port`; health reports SERVING (the model is loaded by now)."""
    # A unary Classify carries the whole file in one message: allow the upload limit plus room
    # for the envelope. Streams are bounded by the same limits chunk by chunk.
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes + (1 << 20)),
            ("grpc.max_send_message_length", 64 << 20),
            # Every worker process binds the port; the kernel spreads connections among them.
            ("grpc.so_reuseport", 1),
        ]
    )
    pb_grpc.add_SoundClassifierServicer_to_server(
        SoundClassifierServicer(service, max_top_k, max_bytes, max_timeline_bytes), server
    )
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
