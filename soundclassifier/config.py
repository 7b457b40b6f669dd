"""Run-time configuration of the serving side: the one module that reads environment variables."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from soundclassifier.audio import Limits
from soundclassifier.store import DEFAULT_TAG


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
        0, ge=0, description="SOUND_ENGINE_THREADS: threads of the inference engine, which also decode "
        "uploads and compute features (0 = one per core)"
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
            "max_batch_size": "SOUND_MAX_BATCH_SIZE",
            "max_latency_ms": "SOUND_MAX_LATENCY_MS",
        }
        return cls.model_validate({k: os.environ[v] for k, v in env.items() if os.environ.get(v)})

    @property
    def clip_limits(self) -> Limits:
        return Limits(max_bytes=int(self.max_upload_mb * 2**20), max_seconds=self.max_clip_seconds)

    @property
    def timeline_limits(self) -> Limits:
        return Limits(
            max_bytes=int(self.max_timeline_upload_mb * 2**20), max_seconds=self.max_timeline_seconds
        )
