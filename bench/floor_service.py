"""The HTTP floor: service.py's own front door, with a /classify that answers without the pipeline.

    bentoml serve bench.floor_service:HttpFloor      # make bench (bench.common.http_floor) starts it for you

Everything a /classify request costs before decoding, taken from service.py rather than copied:
importing it installs the edge (uvicorn's guarded protocol, the request deadline) as the service
does; `HttpFloor` takes `SoundClassifier`'s BentoML configuration (workers, traffic timeout) and
its ASGI middlewares in their order (the disconnect watcher, the upload guard with its rules, the
upload door that calls this module's route with the guard's form), and its route takes the same
argument types (`service.AudioFile`: the AudioUpload that takes the spooled file). BentoML adds
its own middlewares (tracing, metrics, access log) to both alike. The answer is a constant of the
route's own type. Left out: `SoundClassifier.__init__` (the model, the pipeline) and the mounted
apps (the page, /listen), which /classify never reaches.
"""

from __future__ import annotations

import bentoml

with bentoml.importing():
    import service
    from soundclassifier.options import DEFAULT_TOP_K, MinConfidence, TopK
    from soundclassifier.predictions import Classification

ANSWER = Classification(model="http-floor", duration_s=5.0, sample_rate=44100, label="none", top=[])


@bentoml.service(name="http_floor", **service.SoundClassifier.config)
class HttpFloor:
    @bentoml.api(route="/classify")
    async def classify(
        self, audio: service.AudioFile, top_k: TopK = DEFAULT_TOP_K, min_confidence: MinConfidence | None = None,
    ) -> Classification:
        return ANSWER  # audio.file holds the spooled upload by now, as in the service's route


for middleware, options in service.SoundClassifier.middlewares:
    HttpFloor.add_asgi_middleware(middleware, **options)
