"""Run-time settings of the serving side: every `SOUND_*` environment variable, defined once.

`Settings()` reads them (pydantic-settings, prefix `SOUND_`); the README's settings table is
`settings_table()`'s output (tests/test_readme.py keeps the two equal). Front doors and the Spark
job read limits from here through the pipeline, never from the environment themselves.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from soundclassifier.audio import Limits
from soundclassifier.hardware import default_threads
from soundclassifier.store import DEFAULT_TAG

LISTEN_FREE_FRAMES = 100  # frames a live stream may send before their average length is checked

ENV_PREFIX = "SOUND_"
MAX_DEFAULT_WORKERS = 4

class Settings(BaseSettings):
    """Serving settings; each field is read from `SOUND_<FIELD NAME IN CAPITALS>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    model_tag: str = Field(DEFAULT_TAG, description="model served (a tag in the BentoML model store)")
    engine: Literal["auto", "openvino", "onnxruntime", "torch"] = Field(
        "auto", description="inference engine; auto = the fastest one that agrees with PyTorch"
    )
    precision: Literal["int8", "bf16", "fp32"] | None = Field(
        None, description="force the engine's precision (default: the fastest one the model's stored "
        "agreement report accepts)"
    )
    engine_cache: str | None = Field(
        None, description="folder of an engine cache (`python -m soundclassifier.loading FOLDER`; the image has "
        "one): OpenVINO's compiled graph and the engine's measured speed, used at start instead of compiling and "
        "measuring when the model, settings, CPU and cores match; read only"
    )
    engine_threads: int = Field(
        0, ge=0, description="cores the server uses: the engine's threads for a lone clip, and the "
        "streams its workers share out (0 = every core it may run on)"
    )
    workers: int = Field(
        0, ge=0, description="server processes, each with its own engine and batcher "
        f"(0 = one per engine thread, at most {MAX_DEFAULT_WORKERS})"
    )
    grpc_port: int = Field(50051, ge=0, le=65535, description="port of the gRPC front door (0 = off)")
    max_batch_size: int = Field(
        16, ge=1, le=256, description="clips per forward pass at most (1 = no batching)"
    )
    max_latency_ms: int = Field(
        5000, ge=10, description="queueing budget: a request that would wait longer is refused with 503"
    )
    max_upload_mb: float = Field(50.0, gt=0, description="largest upload /classify and /spectrogram accept, and each file of /classify_batch (whose whole request may carry 8 times this)")
    max_clip_seconds: float = Field(600.0, gt=0, description="longest audio /classify accepts")
    max_timeline_upload_mb: float = Field(1024.0, gt=0, description="largest upload /timeline accepts")
    max_timeline_seconds: float = Field(4 * 3600.0, gt=0, description="longest audio /timeline accepts, and a live stream (/listen, gRPC Listen)")
    max_samples: int = Field(
        2**24, gt=0, description="samples (frames x channels) in one clip, or in one timeline window: bounds "
        "a request's decoding work (2**24: 6 min of 44.1 kHz stereo)"
    )
    max_timeline_windows: int = Field(
        6000, gt=0, description="windows of one timeline (4 h at the default hop of a 5 s model)"
    )
    max_timeline_work_samples: int = Field(
        2**32, gt=0, description="samples (frames x channels, at the file's rate) a timeline decodes and "
        "resamples, each window's counted whole: bounds its CPU work, which grows with the rate and the "
        "overlap of windows (2**32: 4 h of 48 kHz stereo at the default hop; about 45 CPU-seconds here, 9-11 ns "
        "a sample, besides at most 6000 forward passes of 2-4 ms)"
    )
    max_batch_files: int = Field(32, gt=0, description="files in one /classify_batch request")
    request_timeout_s: float = Field(
        600.0, gt=0, description="wall time of one request, upload included (BentoML's traffic timeout; "
        "gRPC calls likewise)"
    )
    keep_alive_s: float = Field(
        75.0, gt=0, description="HTTP: how long an idle connection stays open between requests; longer than "
        "clients' and load balancers' own (httpx 5 s, common balancers 60 s), so a reused one is never reset"
    )
    head_timeout_s: float = Field(30.0, gt=0, description="HTTP: time to send a complete request head; else 408")
    body_idle_s: float = Field(30.0, gt=0, description="HTTP: a request body that sends nothing this long is cut")
    min_body_kb_s: float = Field(
        1.0, ge=0, description="HTTP: average rate (KiB/s) a request body must keep once it has taken "
        "SOUND_BODY_IDLE_S; a slower one is cut (a trickle just often enough never to be idle held its "
        "connection until the request timeout)"
    )
    send_idle_s: float = Field(60.0, gt=0, description="HTTP: an answer the client does not read this long is cut")
    max_head_kb: int = Field(64, gt=0, description="HTTP: largest request head (request line + headers); else 431")
    max_connections: int = Field(
        1024, gt=0, description="HTTP: connections a worker process holds open (idle kept-alive ones "
        "included); one more is answered 503 with Retry-After and closed"
    )
    grpc_idle_s: float = Field(30.0, gt=0, description="gRPC: a stream that sends nothing this long is closed")
    grpc_connection_idle_s: float = Field(
        60.0, gt=0, description="gRPC: a connection without a call this long is closed"
    )
    grpc_max_calls: int = Field(64, gt=0, description="gRPC: calls in progress per worker; more get RESOURCE_EXHAUSTED")
    grpc_max_messages: int = Field(65536, gt=0, description="gRPC: messages in one stream (Listen's are bounded by SOUND_LISTEN_MIN_FRAME_MS instead)")
    max_requests_in_flight: int = Field(
        64, gt=0, description="requests a worker process decodes, queues or runs at once; more are refused "
        "at once with 503 and Retry-After"
    )
    worker_stall_s: float = Field(
        10.0, gt=0, description="a worker whose event loop has not run for this long is reported by /livez "
        "(503), whichever worker answers the probe: it is stuck"
    )
    listen_max_streams: int = Field(
        64, gt=0, description="live streams (WebSocket /listen, gRPC Listen) a worker process serves at once; "
        "more are refused at once (WebSocket close 1013, gRPC UNAVAILABLE)"
    )
    listen_max_frame_kb: int = Field(
        256, gt=0, description="largest PCM message of a live stream (256 KiB: 2.7 s of 48 kHz audio); else "
        "WebSocket close 1009, gRPC RESOURCE_EXHAUSTED"
    )
    listen_idle_s: float = Field(10.0, gt=0, description="a live stream that sends no audio this long is closed")
    listen_min_frame_ms: float = Field(
        10.0, gt=0, description=f"audio a live stream's messages must carry on average, past its first "
        f"{LISTEN_FREE_FRAMES}: each "
        "costs a hand-off to an engine thread, so a stream of tiny ones is closed (WebSocket 1008, gRPC "
        "RESOURCE_EXHAUSTED)"
    )
    listen_max_pending_windows: int = Field(
        8, gt=0, description="windows of one live stream prepared and queued at once; a client sending faster "
        "than real time is read no faster than they are answered"
    )

    def layout(self) -> tuple[int, int, int]:
        """(worker processes, engine threads for a lone clip, single-threaded streams per worker).

        One process per core by default, each running its batches as one single-threaded stream,
        and a lone clip on an idle server as one call on every core. Processes, not threads,
        because HTTP parsing is Python on one event loop per process: with one process for 2
        cores, the loop, the feature step and the engine contended for one GIL and one loop
        (A/B at 32 clients: 2 processes x 1 stream 130 req/s vs 1 process x 2 streams 108,
        3 rounds each; a lone request as fast either way). At most MAX_DEFAULT_WORKERS by default:
        each worker holds its own engine, so bigger machines get fewer processes with more streams."""
        cores = self.engine_threads or default_threads()
        workers = self.workers or min(cores, MAX_DEFAULT_WORKERS)
        return workers, cores, max(1, cores // workers)

    @property
    def clip_limits(self) -> Limits:
        return Limits(max_bytes=int(self.max_upload_mb * 2**20), max_seconds=self.max_clip_seconds,
                      max_samples=self.max_samples)

    @property
    def timeline_limits(self) -> Limits:
        return Limits(max_bytes=int(self.max_timeline_upload_mb * 2**20), max_seconds=self.max_timeline_seconds,
                      max_samples=self.max_samples, max_windows=self.max_timeline_windows,
                      max_work_samples=self.max_timeline_work_samples)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def settings_table() -> str:
    """The README's settings table (Markdown), generated from `Settings`."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        rows.append(f"| `{env_name(name)}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m soundclassifier.config: print the table for the README
    print(settings_table())
