"""The HTTP floor: service.py's front door with a /classify that answers without the pipeline.

    bentoml serve bench.floor_service:HttpFloor        # python -m bench.floor runs it for you

Everything a /classify request costs before decoding is here, as service.py sets it up: uvicorn
with the edge limits, BentoML's middlewares (the request deadline, tracing, metrics, access log),
the disconnect watcher, the upload guard's parse of the form, BentoML's own parse and the
AudioUpload that takes the spooled file. The answer is a constant of the route's own type.
"""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field

with bentoml.importing():
    from serving.edge import CancelOnDisconnect, edge_limits, install
    from serving.http_guard import UploadGuard, upload_rules
    from serving.uploads import AudioUpload
    from soundclassifier.config import Settings
    from soundclassifier.options import DEFAULT_TOP_K, MinConfidence, TopK
    from soundclassifier.predictions import Classification

SETTINGS = Settings()
WORKERS, _, _ = SETTINGS.layout()
install(edge_limits(SETTINGS))
ANSWER = Classification(model="http-floor", duration_s=5.0, sample_rate=44100, label="none", top=[])


@bentoml.service(name="http_floor", workers=WORKERS, traffic={"timeout": SETTINGS.request_timeout_s})
class HttpFloor:
    @bentoml.api(route="/classify")
    async def classify(
        self, audio: Annotated[AudioUpload, Field(description="audio file")], top_k: TopK = DEFAULT_TOP_K,
        min_confidence: MinConfidence | None = None,
    ) -> Classification:
        return ANSWER  # audio.file holds the spooled upload by now, as in the service's route


HttpFloor.add_asgi_middleware(CancelOnDisconnect)
HttpFloor.add_asgi_middleware(UploadGuard, rules=upload_rules(SETTINGS))
