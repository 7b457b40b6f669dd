"""Run-time configuration of the serving side: the one module that reads environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from soundclassifier.audio import Limits
from soundclassifier.hardware import default_threads
from soundclassifier.store import DEFAULT_TAG

MAX_DEFAULT_WORKERS = 4

KEEP_ALIVE_S = 75
"""How long the HTTP server keeps an idle connection open (`bentoml serve --timeout-keep-alive`;
every launcher passes it: Makefile, tests/server.py, the container's CMD, the systemd unit).
BentoML's default, 5 s, equals httpx's client-side expiry: a client that reused a connection just
as the server closed it got a reset (httpx ReadError) in 2 of 26 ten-second 64-client soaks here.
A server should outlast its clients' and proxies' idle timeouts (60 s on common load balancers)."""


class ServeConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_tag: str = Field(DEFAULT_TAG, description="SOUND_MODEL_TAG: model served")
    max_upload_mb: float = Field(50.0, gt=0, description="SOUND_MAX_UPLOAD_MB: largest upload accepted")
    max_clip_seconds: float = Field(
        600.0, gt=0, description="SOUND_MAX_CLIP_SECONDS: longest audio /classify accepts"
    )
    max_timeline_seconds: float = Field(
        4 * 3600.0, gt=0, description="SOUND_MAX_TIMELINE_SECONDS: longest audio /timeline accepts"
    )
    max_timeline_upload_mb: float = Field(
        1024.0, gt=0, description="SOUND_MAX_TIMELINE_UPLOAD_MB: largest upload /timeline accepts"
    )
    grpc_port: int = Field(50051, description="SOUND_GRPC_PORT: port of the gRPC front door (0 = off)")
    max_batch_size: int = Field(
        16, ge=1, le=256, description="SOUND_MAX_BATCH_SIZE: clips per forward pass at most (1 = no batching)"
    )
    max_latency_ms: int = Field(
        5000, ge=10, description="SOUND_MAX_LATENCY_MS: queueing budget before a request is refused with 503"
    )
    engine_threads: int = Field(
        0, ge=0, description="SOUND_ENGINE_THREADS: cores the server uses: the inference engine's threads "
        "for a lone clip, and the streams its workers share out (0 = every core it may run on)"
    )
    workers: int = Field(
        0, ge=0, description="SOUND_WORKERS: server processes, each with its own engine and batcher "
        "(0 = one per engine thread, at most 4)"
    )
    engine: Literal["auto", "openvino", "onnxruntime", "torch"] = Field(
        "auto", description="SOUND_ENGINE: inference engine; auto = fastest that agrees with PyTorch"
    )

    @classmethod
    def from_env(cls) -> ServeConfig:
        env = {
            "model_tag": "SOUND_MODEL_TAG",
            "max_upload_mb": "SOUND_MAX_UPLOAD_MB",
            "max_clip_seconds": "SOUND_MAX_CLIP_SECONDS",
            "max_timeline_seconds": "SOUND_MAX_TIMELINE_SECONDS",
            "max_timeline_upload_mb": "SOUND_MAX_TIMELINE_UPLOAD_MB",
            "grpc_port": "SOUND_GRPC_PORT",
            "engine": "SOUND_ENGINE",
            "engine_threads": "SOUND_ENGINE_THREADS",
            "workers": "SOUND_WORKERS",
            "max_batch_size": "SOUND_MAX_BATCH_SIZE",
            "max_latency_ms": "SOUND_MAX_LATENCY_MS",
        }
        return cls.model_validate({k: os.environ[v] for k, v in env.items() if os.environ.get(v)})

    def layout(self) -> tuple[int, int, int]:
        """(worker processes, engine threads for a lone clip, single-threaded streams per worker).

        One process per core by default, each running its batches as one single-threaded stream,
        and a lone clip on an idle server as one call on every core. Processes, not threads,
        because HTTP parsing is Python on one event loop per process: with one process for 2
        cores, the loop, the feature step and the engine contended for one GIL and one loop
        (A/B at 32 clients: 2 processes x 1 stream 130 req/s vs 1 process x 2 streams 108,
        3 rounds each; a lone request as fast either way). At most MAX_DEFAULT_WORKERS by default:
        each worker holds its own engines (1.35 GB resident here, 2.3 GB at its peak while it picks
        its engine), so bigger machines get fewer processes with more streams each."""
        cores = self.engine_threads or default_threads()
        workers = self.workers or min(cores, MAX_DEFAULT_WORKERS)
        return workers, cores, max(1, cores // workers)

    @property
    def clip_limits(self) -> Limits:
        return Limits(max_bytes=int(self.max_upload_mb * 2**20), max_seconds=self.max_clip_seconds)

    @property
    def timeline_limits(self) -> Limits:
        return Limits(
            max_bytes=int(self.max_timeline_upload_mb * 2**20), max_seconds=self.max_timeline_seconds
        )
