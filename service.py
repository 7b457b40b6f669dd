"""The sound classifier service: BentoML's HTTP front door over the core's pipeline.

    bentoml serve service:SoundClassifier            # http://localhost:3000 (make serve)

Each worker process (one per core by default: `Settings.layout`) opens one pipeline
(soundclassifier/pipeline.py: decode + features -> adaptive batcher -> engine -> typed results)
and every front door adapts it: the routes below, gRPC (serving/grpc_server.py), the page
(serving/page.py) and live streams (WebSocket /listen: serving/listen.py). Uploads are parsed
and checked once, by the upload guard (serving/http_guard.py), and the upload door
(serving/door.py) calls the routes below with that form, as BentoML's endpoint would; client
errors become answers in serving/errors.py.
"""

from __future__ import annotations

import functools
import gc
import logging
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

with bentoml.importing():
    from starlette.responses import Response

    from serving.batching import AdaptiveBatcher
    from serving.door import UploadDoor
    from serving.edge import CancelOnDisconnect, edge_limits, install
    from serving.errors import http_answer
    from serving.grpc_server import start_grpc_server
    from serving.http_guard import UploadGuard, upload_rules
    from serving.listen import app as listen_app
    from serving.metrics import PrometheusHooks
    from serving.page import app as page_app
    from serving.page import front_door
    from serving.supervise import HeapTrimmer, WorkerCensus
    from serving.uploads import AudioUpload
    from soundclassifier.config import Settings
    from soundclassifier.options import DEFAULT_TIMELINE_TOP_K, DEFAULT_TOP_K, HopS, MinConfidence, TopK
    from soundclassifier.pipeline import open_pipeline
    from soundclassifier.predictions import BatchItem, Classification, ModelInfo, Timeline

SETTINGS = Settings()
WORKERS, _, _ = SETTINGS.layout()
# uvicorn's deadlines, header limit and keep-alive (SOUND_KEEP_ALIVE_S ...) in every worker, however
# the server was started: BentoML has no setting for them (serving/edge.py).
install(edge_limits(SETTINGS))

# Uploads stay where the multipart parser spooled them and are decoded a block at a time.
AudioFile = Annotated[AudioUpload, Field(description="audio file: WAV, FLAC, OGG or MP3")]
LongAudioFile = Annotated[AudioUpload, Field(description="audio file: WAV, FLAC, OGG or MP3, any length")]

log = logging.getLogger("sound_classifier")


@bentoml.service(
    name="sound_classifier",
    workers=WORKERS,  # one process per core by default; each has its own engine and batcher
    traffic={"timeout": SETTINGS.request_timeout_s},
    http={"port": 3000},
)
class SoundClassifier:
    model_ref = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        # Show the core's INFO lines (engine choice, gRPC port) in BentoML's log, formatted alike.
        for name in ("soundclassifier", "sound_classifier"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            logger.handlers = logging.getLogger("bentoml").handlers
            logger.propagate = False
        # Defaults (SOUND_MAX_BATCH_SIZE, SOUND_MAX_LATENCY_MS), measured on 2 cores with OpenVINO
        # bf16: 203 clips/s at batch 1, 235 at 16, 238 at 32: batches past 16 double the wait for
        # 1% more; a 5 s queueing budget covers 64 concurrent clients even on a busy machine.
        self.pipeline = open_pipeline(
            SETTINGS,
            self.model_ref,
            make_batcher=functools.partial(AdaptiveBatcher, max_batch_size=SETTINGS.max_batch_size,
                                           max_latency_ms=SETTINGS.max_latency_ms),
            hooks=PrometheusHooks(SETTINGS.max_batch_size),
        )
        page_app.state.pipeline = listen_app.state.pipeline = self.pipeline
        engine = self.pipeline.classifier.engine
        log.info("serving %s on %s/%s (%d threads for a lone clip, %d streams; %d worker processes)",
                 self.pipeline.classifier.tag, engine.name, engine.precision, engine.threads, engine.streams,
                 WORKERS)
        # What is loaded by now (the engine, BentoML: hundreds of thousands of objects) lives as
        # long as the process. Left to the collector, every full collection walked all of it with
        # the GIL held: 280 ms, every few seconds under load, and the slowest request at one client
        # took 339 ms instead of 45-87 (python -m experiments.ab, 8 rounds). Frozen objects are never
        # scanned again.
        gc.collect()
        gc.freeze()
        self.census = WorkerCensus(WORKERS, stall_s=SETTINGS.worker_stall_s)
        # glibc keeps what a burst of requests freed (idle gRPC streams, large timelines: +50-135
        # MiB a worker, kept for good); give it back once the worker is idle (serving/supervise.py).
        self.heap = HeapTrimmer(busy=lambda: self.pipeline.in_flight > 0).start()

    async def __is_alive__(self) -> bool:
        """/livez: every worker of this server is running (in a container BentoML never replaces
        a dead one, and the survivors would answer for it: serving/supervise.py)."""
        return self.census.healthy()

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self.grpc_server = None
        if SETTINGS.grpc_port:
            self.grpc_server = await start_grpc_server(self.pipeline, SETTINGS.grpc_port)
            log.info("gRPC front door on port %d", SETTINGS.grpc_port)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=5)
        self.pipeline.close()

    @bentoml.api(route="/classify")
    async def classify(
        self, audio: AudioFile, top_k: TopK = DEFAULT_TOP_K, min_confidence: MinConfidence | None = None
    ) -> Classification:
        """Classify one clip (WAV, FLAC, OGG or MP3); long clips are judged on their loudest window."""
        return await http_answer(self.pipeline.classify(audio.file, top_k=top_k, min_confidence=min_confidence))

    @bentoml.api(route="/classify_batch")
    async def classify_batch(
        self, audio: list[AudioFile], top_k: TopK = DEFAULT_TOP_K, min_confidence: MinConfidence | None = None
    ) -> list[BatchItem]:
        """Classify several files; a bad file fails only its own entry."""
        files = [(upload.filename, upload.file) for upload in audio]
        return await http_answer(self.pipeline.classify_files(files, top_k=top_k, min_confidence=min_confidence))

    @bentoml.api(route="/timeline")
    async def timeline(
        self,
        audio: LongAudioFile,
        hop_s: HopS | None = None,
        top_k: TopK = DEFAULT_TIMELINE_TOP_K,
        min_confidence: MinConfidence | None = None,
    ) -> Timeline:
        """Classify a long recording in sliding windows of the model's clip length."""
        return await http_answer(self.pipeline.timeline(audio.file, hop_s=hop_s, top_k=top_k,
                                                        min_confidence=min_confidence))

    @bentoml.api(route="/spectrogram")
    async def spectrogram(self, audio: AudioFile) -> Annotated[Path, ContentType("image/png")]:
        """PNG of the log-mel spectrogram exactly as the model sees it."""
        async def png() -> Response:
            return Response(await self.pipeline.spectrogram(audio.file), media_type="image/png")

        return await http_answer(png())

    @bentoml.api(route="/info")
    def info(self) -> ModelInfo:
        """Which model answers: tag, labels, feature settings, training metrics, engine."""
        return self.pipeline.describe()


SoundClassifier.add_asgi_middleware(CancelOnDisconnect)  # work for a client that has gone stops
SoundClassifier.add_asgi_middleware(UploadGuard, rules=upload_rules(SETTINGS))
SoundClassifier.add_asgi_middleware(UploadDoor)  # answers the upload routes from the guard's parse
# The web page (serving/page.py) at /ui, and GET / sends a person there.
SoundClassifier.mount_asgi_app(page_app, path="/ui")
SoundClassifier.mount_asgi_app(front_door, path="/")
SoundClassifier.mount_asgi_app(listen_app, path="/")  # WebSocket /listen (serving/listen.py)
