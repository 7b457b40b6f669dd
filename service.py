"""The sound classifier service: HTTP API with adaptive batching over one shared core.

    bentoml serve service:SoundClassifier            # http://localhost:3000 (make serve)

HTTP on 3000 and gRPC (serving/grpc_server.py) on SOUND_GRPC_PORT share one core and one batcher
in each worker process (one per core by default: `Settings.layout`).
Request path: upload -> UploadGuard (size, multipart; answers /classify from its own parse, see
`classify_form`) -> decode + log-mel in a worker thread -> shared adaptive batcher -> network ->
probabilities -> typed JSON. Decoding, features and post-processing live in `soundclassifier`;
this file only adapts them to HTTP.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated, NamedTuple

import bentoml
from bentoml.validators import ContentType
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

with bentoml.importing():
    import asyncio

    from opentelemetry import trace
    from starlette.datastructures import FormData, UploadFile
    from starlette.responses import JSONResponse, Response

    from serving.grpc_server import start_grpc_server
    from serving.http_guard import UploadGuard, UploadRule
    from serving.metrics import create_metrics
    from serving.page import app as page_app
    from serving.page import front_door
    from soundclassifier.audio import AudioError
    from soundclassifier.batching import Batcher, OverloadedError, Preparer
    from soundclassifier.classifier import Classifier
    from soundclassifier.config import Settings
    from soundclassifier.engine import select_engine
    from soundclassifier.predictions import Classification, Timeline
    from soundclassifier.render import spectrogram_png
    from soundclassifier.store import load_model
    from soundclassifier.timeline import MIN_HOP_S

CONFIG = Settings()
# Defaults (SOUND_MAX_BATCH_SIZE, SOUND_MAX_LATENCY_MS), measured on 2 cores with OpenVINO bf16:
# 203 clips/s at batch 1, 235 at 16, 238 at 32: batches past 16 double the wait for 1% more, so 16;
# a 5 s queueing budget covers 64 concurrent clients even on a busy machine (at 60 req/s they saw
# p99 2.4 s, and a 2 s budget shed some of them), and beyond it the queue sheds load as 503.
WORKERS, ENGINE_THREADS, STREAMS = CONFIG.layout()  # see Settings.layout
MAX_BATCH_SIZE = CONFIG.max_batch_size
MAX_LATENCY_MS = CONFIG.max_latency_ms
RETRY_AFTER_S = 1
SERVICE_NAME = "sound_classifier"
MAX_TOP_K = 50

log = logging.getLogger("sound_classifier")


class Upload(NamedTuple):
    """An uploaded clip as the handlers receive it: the client's file name and the bytes."""

    filename: str
    data: bytes


def _in_memory(value: object, to_path: ValidatorFunctionWrapHandler) -> Upload:
    # BentoML saves every uploaded file to a temporary file (in a per-request directory it then
    # removes) on the event loop before a handler runs: about 1 ms of CPU per 0.4 MB clip here,
    # for a file that is decoded from memory anyway. A clip is small (the upload guard bounds
    # it), so it stays in memory; anything else (a path from an in-process client) is read.
    if isinstance(value, UploadFile):
        return Upload(value.filename or "", value.file.read())
    path = to_path(value)
    return Upload(path.name, path.read_bytes())


# Declared as a Path so that BentoML parses and documents the field as a file upload; handlers get
# an `Upload`. Any content type is accepted: the decoder sniffs the bytes, and browsers and curl
# often send application/octet-stream for audio.
AudioFile = Annotated[Path, Field(description="audio file: WAV, FLAC, OGG or MP3"), WrapValidator(_in_memory)]
# Long recordings stay on disk, where the timeline reads them one window at a time.
LongAudioFile = Annotated[Path, Field(description="audio file: WAV, FLAC, OGG or MP3, any length")]
TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K, description="how many labels to return")]


class ClassifyArgs(BaseModel):
    """The arguments of `classify`, for the upload guard's direct answer (same types, same checks)."""

    model_config = ConfigDict(extra="forbid")
    audio: AudioFile
    top_k: TopK = 5


def _single_values(form: FormData) -> dict:
    items = form.multi_items()
    if len({k for k, _ in items}) != len(items):
        raise ValueError("a field given more than once")
    return dict(items)


def _bentoml_headers() -> dict[str, str]:
    # What BentoML adds to the answers of its own routes: the request ID is the id of the request's
    # OpenTelemetry span (BentoML's server hook takes it from there too), formatted as in its logs.
    headers = {"Server": f"BentoML Service/{SERVICE_NAME}"}
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        headers["X-BentoML-Request-ID"] = format(span.span_id, "016x")
    return headers


class BatchItem(BaseModel):
    filename: str
    result: Classification | None = None
    error: str | None = Field(None, description="kind of problem, when this file failed")
    detail: str | None = Field(None, description="what is wrong with this file")


class ModelInfo(BaseModel):
    model: str
    labels: list[str]
    feature_settings: dict
    metrics: dict
    dataset: str
    engine: str
    precision: str
    engines_tried: dict
    max_batch_size: int
    max_latency_ms: int
    threads: dict[str, int] = Field(
        description="per worker process: engine threads for a lone clip, single-threaded streams under load, "
        "threads of the feature step (the streams' own); and the number of worker processes"
    )
    limits: dict


@bentoml.service(
    name=SERVICE_NAME,
    workers=WORKERS,  # one process per core by default; each has its own engine and batcher
    traffic={"timeout": 600},
    http={"port": 3000},
)
class SoundClassifier:
    model_ref = bentoml.models.BentoModel(CONFIG.model_tag)

    def __init__(self) -> None:
        # Show the core's INFO lines (engine choice, gRPC port) in BentoML's log, formatted alike.
        for name in ("soundclassifier", "sound_classifier"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            logger.handlers = logging.getLogger("bentoml").handlers
            logger.propagate = False
        model = load_model(self.model_ref)
        engine, self.engine_report = select_engine(
            model.network, model.onnx_path, model.samples, CONFIG.engine, threads=ENGINE_THREADS, streams=STREAMS
        )
        self.core = Classifier(model, engine)
        # Clips are decoded and featurised on the engine's own stream threads.
        self.prepare = Preparer(engine.workers, engine.streams)
        self.metrics = create_metrics(MAX_BATCH_SIZE)
        self.metrics.engine.labels(self.core.engine.name, self.core.engine.precision, self.core.tag).set(1)
        self.batcher = Batcher(
            self.core.forward,
            max_batch_size=MAX_BATCH_SIZE,
            max_latency_ms=MAX_LATENCY_MS,
            seconds_per_clip=1 / self.engine_report["clips_per_second"],
            on_batch=self.metrics.batch_size.observe,
            others_busy=self.prepare.busy,
        )
        log.info("serving %s on %s/%s (%d threads for a lone clip, %d streams; %d worker processes)",
                 self.core.tag, engine.name, engine.precision, engine.threads, engine.streams, WORKERS)
        # What is loaded by now (PyTorch, OpenVINO, BentoML: ~485k objects) lives as long as the
        # process. Left to the collector, every full collection walked all of it with the GIL held:
        # 280 ms, every few seconds under load, and the slowest request at one client took 339 ms
        # instead of 45-87 (python -m bench.ab, 8 rounds). Frozen objects are never scanned again.
        gc.collect()
        gc.freeze()

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self.grpc_server = None
        if CONFIG.grpc_port:
            self.grpc_server = await start_grpc_server(
                self,
                CONFIG.grpc_port,
                max_top_k=MAX_TOP_K,
                max_bytes=CONFIG.clip_limits.max_bytes,
                max_timeline_bytes=CONFIG.timeline_limits.max_bytes,
            )
            log.info("gRPC front door on port %d", CONFIG.grpc_port)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=5)
        self.batcher.close()

    # --- the core, as every front door uses it ---------------------------------------------------

    async def classify_bytes(self, source: bytes, top_k: int, endpoint: str) -> Classification:
        """Decode on an engine worker, share a forward pass through the batcher, report."""
        try:
            audio, x = await self.prepare(self.core.prepare, source, CONFIG.clip_limits)
        except AudioError as e:
            self.metrics.audio_errors.labels(e.kind.value).inc()
            raise
        probs = await self.batcher(x[None])
        self.metrics.clips.labels(endpoint).inc()
        self.metrics.audio_seconds.labels(endpoint).inc(audio.duration)
        return self.core.classification(audio, probs[0], top_k)

    async def timeline_of(self, source: Path | bytes, hop_s: float | None, top_k: int) -> Timeline:
        job = await self.prepare(self.core.start_timeline, source, hop_s, CONFIG.timeline_limits)
        chunks = job.chunks()
        while (item := await self.prepare(next, chunks, None)) is not None:
            windows, inputs = item
            job.add(windows, await self.batcher(inputs), top_k)
            self.metrics.clips.labels("timeline").inc(len(windows))
        self.metrics.audio_seconds.labels("timeline").inc(job.stream.duration_s)
        return job.result()

    # --- HTTP ------------------------------------------------------------------------------------

    @bentoml.api(route="/classify")
    async def classify(self, audio: AudioFile, top_k: TopK = 5) -> Classification:
        """Classify one clip (WAV, FLAC, OGG or MP3); long clips are judged on their loudest window."""
        return await self._classify(audio, top_k)

    async def classify_form(self, form: FormData) -> Response | None:
        """POST /classify as the upload guard hands it over: the form parsed once, the same
        arguments and answer as `classify` above (which stays the API's declaration, and answers
        whatever this declines: a form its arguments do not validate, with BentoML's own 400)."""
        try:
            args = ClassifyArgs.model_validate(_single_values(form))
        except (ValidationError, ValueError):
            return None
        result = await self._classify(args.audio, args.top_k)
        if not isinstance(result, Response):
            result = Response(result.model_dump_json(), media_type="application/json")
        result.headers.update(_bentoml_headers())
        return result

    async def _classify(self, audio: Upload, top_k: int) -> Classification | JSONResponse:
        try:
            return await self.classify_bytes(audio.data, top_k, "classify")
        except (AudioError, OverloadedError) as e:
            return self._error(e)

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, audio: list[AudioFile], top_k: TopK = 5) -> list[BatchItem]:
        """Classify several files; a bad file fails only its own entry."""
        async def one(upload: Upload) -> BatchItem:
            try:
                result = await self.classify_bytes(upload.data, top_k, "classify_batch")
            except AudioError as e:
                return BatchItem(filename=upload.filename, error=e.kind.value, detail=e.message)
            return BatchItem(filename=upload.filename, result=result)

        items = await asyncio.gather(*(one(p) for p in audio), return_exceptions=True)
        for item in items:
            if isinstance(item, OverloadedError):
                return self._error(item)
            if isinstance(item, BaseException):
                raise item
        return items

    @bentoml.api(route="/timeline")
    async def timeline(
        self,
        audio: LongAudioFile,
        hop_s: Annotated[
            float | None, Field(ge=MIN_HOP_S, description="seconds between window starts; default half a window")
        ] = None,
        top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = 3,
    ) -> Timeline:
        """Classify a long recording in sliding windows of the model's clip length."""
        if hop_s is not None and hop_s > self.core.settings.clip_seconds:
            return JSONResponse(
                {"error": "bad_request", "detail": f"hop_s must be <= the window ({self.core.settings.clip_seconds:g} s)."},
                status_code=400,
            )
        try:
            return await self.timeline_of(audio, hop_s, top_k)
        except (AudioError, OverloadedError) as e:
            return self._error(e)

    @bentoml.api(route="/spectrogram")
    async def spectrogram(self, audio: AudioFile) -> Annotated[Path, ContentType("image/png")]:
        """PNG of the log-mel spectrogram exactly as the model sees it."""
        try:
            audio_, x = await self.prepare(self.core.prepare, audio.data, CONFIG.clip_limits)
        except AudioError as e:
            return self._error(e)
        png = await self.prepare(spectrogram_png, x, self.core.settings, f"{audio_.duration:.2f} s")
        return Response(png, media_type="image/png")

    @bentoml.api(route="/info")
    def info(self) -> ModelInfo:
        """Which model answers: tag, labels, feature settings, training metrics, engine."""
        meta = self.core.model.metadata
        return ModelInfo(
            model=self.core.tag,
            labels=self.core.labels,
            feature_settings=self.core.settings.model_dump(),
            metrics={**meta.get("metrics", {}), "per_class_recall": meta.get("per_class_recall", {})},
            dataset=str(meta.get("dataset", "")),
            engine=self.core.engine.name,
            precision=self.core.engine.precision,
            engines_tried=self.engine_report.get("tried", {}),
            max_batch_size=MAX_BATCH_SIZE,
            max_latency_ms=MAX_LATENCY_MS,
            threads={"engine": self.core.engine.threads, "streams": self.core.engine.streams,
                     "features": self.prepare.threads, "workers": WORKERS},
            limits=CONFIG.model_dump(exclude={"model_tag", "grpc_port", "engine", "max_batch_size", "max_latency_ms",
                                              "engine_threads", "workers"}),
        )

    def _error(self, e: Exception) -> JSONResponse:
        if isinstance(e, OverloadedError):
            self.metrics.overloaded.inc()
            return JSONResponse(
                {"error": "overloaded", "detail": str(e)},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        assert isinstance(e, AudioError)
        return JSONResponse(e.to_dict(), status_code=e.http_status)


async def _classify_form(form: FormData) -> Response | None:
    return await bentoml.get_current_service().classify_form(form)


_MB = 2**20
SoundClassifier.add_asgi_middleware(
    UploadGuard,
    rules={
        # /classify is answered from the guard's own parse (SoundClassifier.classify_form).
        "/classify": UploadRule(int(CONFIG.max_upload_mb * _MB) + _MB, answer=_classify_form),
        "/spectrogram": UploadRule(int(CONFIG.max_upload_mb * _MB) + _MB),
        "/classify_batch": UploadRule(int(8 * CONFIG.max_upload_mb * _MB)),
        "/timeline": UploadRule(int(CONFIG.max_timeline_upload_mb * _MB) + _MB),
    },
)
# The web page (serving/page.py) at /ui, and GET / sends a person there.
SoundClassifier.mount_asgi_app(page_app, path="/ui")
SoundClassifier.mount_asgi_app(front_door, path="/")
