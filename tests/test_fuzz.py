"""Hostile and malformed uploads against the real server, over HTTP and gRPC, and a short soak.

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_fuzz.py

The `served` fixture is a real `bentoml serve` (limits 60 s / 5 MB, gRPC on `served.grpc_port`).
A seeded generator (`SEED`; change it to explore) builds ROUND_SIZE requests: random bytes, magic
numbers followed by junk, truncated and mutated files of every format, hand-built WAV headers with
odd or lying fields (a data chunk claiming gigabytes, zero-length data, 0 or 65535 channels, 0 or
64 bits), NaN and infinite floats, huge multipart and request headers, wrong content types, fields
sent as text, bad top_k / hop_s, and valid-but-odd files (8-bit, 192 kHz, 32 channels...). Every
answer must be a 200 with a well-formed result or a documented refusal that names the problem:
HTTP 400/413/415/422 with JSON `error` + non-empty `detail`; gRPC INVALID_ARGUMENT /
RESOURCE_EXHAUSTED / OUT_OF_RANGE with non-empty details. Never a 5xx, INTERNAL or UNKNOWN.
A failing request's body is written to tests/artifacts/fuzz/ so it can be replayed with curl.

Sample rates are drawn from a list whose resampling kernels are small: with torchaudio's
gcd-based kernel a 0.05-s WAV at a rate like 44,101 Hz needs ~16 GB, so payloads whose
header decodes to any other rate are never sent at random (see `affordable`); the regression
tests at the bottom cover those rates on purpose with sizes that are safe to send.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
import re
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2 as pb
from serving.grpc_stubs.soundclassifier.v1 import sound_classifier_pb2_grpc as pb_grpc
from soundclassifier.config import Settings
from testkit import audiofiles as af

pytestmark = pytest.mark.slow

SEED = 20261124
ROUND_SIZE = 560  # requests per round (HTTP + gRPC); the memory test then sends the round twice more
CONCURRENCY = 4  # requests in flight while fuzzing
TIMEOUT_S = 60.0
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "fuzz"

MODEL_RATE = 22050
# The served fixture's limits (tests/conftest.py).
MAX_SECONDS, MAX_BYTES = 60.0, 5 * 2**20
HTTP_REFUSALS = frozenset({400, 413, 415, 422})
GRPC_REFUSALS = frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"})
# Memory: after the first round (the warm-up), sending the same requests twice more may grow the
# resident memory of the server (arbiter + workers) by at most RSS_MARGIN_MB per worker process.
# Measured here with one worker: 15-25 MB per round after the first, shrinking round by round
# (allocator pools settling), none of it in the arbiter; with two, 66 MB in all. Over 2 x ROUND_SIZE requests the margin catches any leak of ~60 KB or more per
# request: a decoded 1-s clip (88 KB), a model input (110 KB), a spectrogram figure (MBs).
RSS_MARGIN_MB = 64.0
# Rates whose resampling kernel to 22.05 kHz is small (rate / gcd and 22050 / gcd stay < 3000).
RATES = (1, 8, 100, 1000, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000, 384000)


# --- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and what its answer must be: "ok" (200 / OK), "refused" (a documented 4xx /
    gRPC code, from `allowed` when given), or "any" (either, but never a server error)."""

    name: str
    transport: str  # "http" or "grpc"
    expect: str = "any"
    allowed: frozenset = frozenset()
    # HTTP
    route: str = "/classify"
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    items: tuple[str, ...] = ()  # /classify_batch: the expectation of each file's entry
    rate: int | None = None  # for "ok": the sample rate the answer must report
    # gRPC
    method: str = "Classify"
    messages: tuple = ()

    def describe(self) -> str:
        if self.transport == "http":
            return (f"POST {self.route} content-type={self.content_type!r} headers={[h for h, _ in self.headers]} "
                    f"body[{len(self.body)}]={self.body[:160]!r}")
        sizes = [len(getattr(m, "audio", b"") or getattr(m, "data", b"")) for m in self.messages]
        first = self.messages[0] if self.messages else None
        fields = {k: getattr(first, k) for k in ("top_k", "hop_s") if first is not None and hasattr(first, k)}
        return f"gRPC {self.method} messages={len(self.messages)} bytes={sizes[:8]} {fields}"


def form(parts: list[tuple[str, str | None, bytes | str]], *, boundary: str | None = None,
         part_headers: str = "") -> tuple[bytes, str]:
    """multipart/form-data from (field, filename or None for a text field, content)."""
    boundary = boundary or uuid.uuid4().hex
    out = []
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{part_headers}"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        data = content.encode() if isinstance(content, str) else content
        out.append(head.encode() + b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


TIMELINE_MAX_SECONDS = 4 * 3600.0  # the served default: /timeline and gRPC Timeline refuse longer audio


def affordable(data: bytes, max_seconds: float = MAX_SECONDS, refused_above: float = MAX_SECONDS) -> bool:
    """May this payload be sent at random? False if libsndfile reads a header whose sample rate
    makes a huge resampling kernel, or audio the server would accept (up to `refused_above`
    seconds) that is longer than `max_seconds` or huge to process."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - not readable here: the server refuses it the same way
        return True
    rate, frames, channels = int(info.samplerate), int(info.frames), int(info.channels)
    if rate <= 0:
        return True
    g = math.gcd(rate, MODEL_RATE)
    cheap_kernel = rate // g < 3000 and MODEL_RATE // g < 3000
    duration = frames / rate
    return cheap_kernel and (duration > refused_above or (duration <= max_seconds and frames * channels <= 2e7))


def wav_header(*, tag: int, channels: int, rate: int, bits: int, payload: bytes, block_align: int | None = None,
               byte_rate: int | None = None, data_size: int | None = None, riff_size: int | None = None,
               extra: bytes = b"", fmt_extension: bytes = b"") -> bytes:
    """A RIFF/WAVE file written field by field, so any field can lie."""
    if block_align is None:
        block_align = (channels * bits // 8) & 0xFFFF
    if byte_rate is None:
        byte_rate = (rate * block_align) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF, byte_rate, block_align & 0xFFFF,
                      bits & 0xFFFF) + fmt_extension
    data_size = len(payload) if data_size is None else data_size
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", data_size) + payload
    riff_size = 4 + len(chunks) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff_size & 0xFFFFFFFF) + b"WAVE" + chunks


def base_files() -> dict[str, bytes]:
    """Small valid files of every format, the raw material for truncation and mutation."""
    x = af.sine(660.0, 0.5)
    return {
        "wav16": af.wav_sine(seconds=0.5),
        "wav-float": af.encode(x, af.RATE, "WAV", "FLOAT"),
        "flac": af.flac_sine(seconds=0.5),
        "ogg-vorbis": af.ogg_vorbis_sine(seconds=0.5),
        "ogg-opus": af.ogg_opus_sine(seconds=0.5),
        "mp3": af.mp3_sine(seconds=0.5),
        "aiff": af.encode(x, af.RATE, "AIFF", "PCM_16"),
    }


def odd_valid_files() -> list[tuple[str, bytes, int]]:
    """Valid files at the edges of what we accept: (name, bytes, sample rate). All must be classified."""
    x8k = af.sine(440.0, 0.7, 8000)
    return [
        ("8-bit", af.wav_8bit(), af.RATE),
        ("192kHz-24bit", af.wav_192k(seconds=0.5), 192000),
        ("32-channels", af.wav_32_channels(seconds=0.5), af.RATE),
        ("8kHz", af.encode(x8k, 8000, "WAV", "PCM_16"), 8000),
        ("float64", af.encode(af.sine(seconds=0.3).astype(np.float64), af.RATE, "WAV", "DOUBLE"), af.RATE),
        ("one-sample", af.encode(np.array([0.25], np.float32), af.RATE, "WAV", "PCM_16"), af.RATE),
        ("flac-96k-24bit-6ch", af.encode(np.repeat(af.sine(300.0, 0.3, 96000)[:, None], 6, 1), 96000, "FLAC", "PCM_24"), 96000),
        ("full-scale-square", af.encode(np.sign(af.sine(100.0, 0.5)) * 1.0, af.RATE, "WAV", "PCM_16"), af.RATE),
        ("w64", af.encode(af.sine(seconds=0.3), af.RATE, "W64", "PCM_16"), af.RATE),
        ("rf64", af.encode(af.sine(seconds=0.3), af.RATE, "RF64", "PCM_16"), af.RATE),
        ("silence", af.wav_silence(0.5), af.RATE),
        ("ogg-opus-48k", af.ogg_opus_sine(seconds=0.3), 48000),
    ]


class Generator:
    """Deterministic (seeded) malformed uploads; each method returns (name, bytes, expectation)."""

    MAGICS = (b"RIFF\x24\x00\x00\x00WAVE", b"RIFF\xff\xff\xff\xffWAVEfmt ", b"fLaC", b"fLaC\x00\x00\x00\x22", b"OggS\x00\x02",
              b"ID3\x04\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x64", b"FORM\x00\x00\x00\x00AIFF", b"RF64", b".snd",
              b"caff", b"MThd", b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\x00" * 64)

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.bases = base_files()

    def _safe(self, make, timeline: bool):
        for _ in range(200):
            name, data, expect = make()
            if affordable(data, 10.0, TIMELINE_MAX_SECONDS) if timeline else affordable(data):
                return name, data, expect
        raise AssertionError("the generator produced no affordable payload in 200 tries")

    def random_bytes(self):
        n = self.rng.choice([1, 2, 3, 4, 8, 12, 43, 44, 45, 100, 1000, 4096, self.rng.randint(1, 200_000)])
        return f"random-{n}B", self.rng.randbytes(n), "any"

    def magic_junk(self):
        magic = self.rng.choice(self.MAGICS)
        n = self.rng.choice([0, 1, 10, 100, 5000])
        return f"magic-{magic[:4]!r}+{n}B", magic + self.rng.randbytes(n), "any"

    def truncated(self):
        kind, data = self.rng.choice(sorted(self.bases.items()))
        cut = self.rng.randint(0, 100) if self.rng.random() < 0.5 else self.rng.randint(0, len(data) - 1)
        return f"truncated-{kind}@{cut}", data[:cut], "any"

    def mutated(self):
        kind, data = self.rng.choice(sorted(self.bases.items()))
        buf = bytearray(data)
        k = self.rng.randint(1, 16)
        for _ in range(k):
            i = self.rng.randrange(min(64, len(buf))) if self.rng.random() < 0.7 else self.rng.randrange(len(buf))
            buf[i] = self.rng.randrange(256)
        return f"mutated-{kind}x{k}", bytes(buf), "any"

    def crafted_wav(self):
        r = self.rng
        tag = r.choice([1, 1, 1, 3, 3, 6, 7, 0xFFFE, 0x55, 0, 0xFFFF, 2, 0x11])
        channels = r.choice([1, 1, 2, 0, 3, 32, 255, 65535])
        rate = r.choice(RATES + (0,))
        bits = r.choice([8, 16, 16, 24, 32, 0, 1, 4, 12, 64, 65535])
        payload = r.randbytes(r.choice([0, 1, 3, 100, 4000, 20000]))
        computed = (channels * bits // 8) & 0xFFFF
        block_align = r.choice([computed, computed, 0, 1, 65535])
        byte_rate = r.choice([None, None, 0, 0xFFFFFFFF])
        data_size = r.choice([None, None, 0, 0xFFFFFFFF, 0x7FFF0000, 2 * len(payload) + 2, len(payload) // 2])
        riff_size = r.choice([None, None, 0, 4, 0xFFFFFFFF])
        extra = r.choice([b"", b"", b"LIST\x08\x00\x00\x00INFOjunk", b"junk\x03\x00\x00\x00abc",
                          b"fact\x04\x00\x00\x00\x10\x00\x00\x00", b"big \x00\xff\xff\xff"])
        ext = r.choice([b"", b"\x00\x00", b"\x16\x00" + r.randbytes(22)]) if tag == 0xFFFE or r.random() < 0.2 else b""
        data = wav_header(tag=tag, channels=channels, rate=rate, bits=bits, payload=payload, block_align=block_align,
                          byte_rate=byte_rate, data_size=data_size, riff_size=riff_size, extra=extra, fmt_extension=ext)
        name = (f"crafted-wav[tag={tag:#x},ch={channels},rate={rate},bits={bits},align={block_align},"
                f"data={data_size},riff={riff_size},payload={len(payload)},extra={extra[:4]!r},ext={len(ext)}]")
        return name, data, "any"

    def gigabyte_claim(self):
        claim = self.rng.choice([0x7FFF0000, 0x40000000, 2**31, 10**9, 0xFFFFFFC0])
        return f"gigabyte-header-{claim:#x}", af.gigabyte_header_wav(claimed_bytes=claim), "refused"

    def zero_data(self):
        rate = self.rng.choice(RATES[4:])
        if self.rng.random() < 0.5:
            return f"zero-length-data@{rate}", af.zero_frame_wav(rate), "refused"
        return f"header-only@{rate}", af.header_only_wav(rate=rate), "refused"

    def non_finite(self):
        value = self.rng.choice([np.nan, np.inf, -np.inf])
        subtype = self.rng.choice(["FLOAT", "DOUBLE"])
        x = af.sine(seconds=0.2).astype(np.float64)
        x[self.rng.randrange(len(x))] = value
        return f"non-finite-{value}-{subtype}", af.encode(x, af.RATE, "WAV", subtype), "refused"

    def odd_valid(self):
        name, data, rate = self.rng.choice(odd_valid_files())
        return f"odd-valid-{name}", data, ("ok", rate)

    def payload(self, timeline: bool = False):
        """Any of the above, weighted; returns (name, bytes, expectation). For a timeline, audio the
        server accepts is at most 10 s long (a timeline's cost grows with its windows)."""
        makers = [(self.random_bytes, 3), (self.magic_junk, 3), (self.truncated, 4), (self.mutated, 4),
                  (self.crafted_wav, 6), (self.gigabyte_claim, 1), (self.zero_data, 1), (self.non_finite, 1),
                  (self.odd_valid, 2)]
        make = self.rng.choices([m for m, _ in makers], weights=[w for _, w in makers])[0]
        return self._safe(make, timeline)


def _expectation(expect) -> tuple[str, int | None]:
    return (expect[0], expect[1]) if isinstance(expect, tuple) else (expect, None)


def http_cases(gen: Generator, n: int) -> list[Case]:
    r = gen.rng
    cases: list[Case] = []

    def upload_case(route: str, name: str, data: bytes, expect, fields: dict[str, str] | None = None) -> Case:
        kind, rate = _expectation(expect)
        body, ctype = form([("audio", "clip.wav", data), *((k, None, v) for k, v in (fields or {}).items())])
        allowed = frozenset({422}) if name.startswith("non-finite") else frozenset()
        return Case(f"http{route}:{name}", "http", kind, allowed, route=route, body=body, content_type=ctype,
                    rate=rate)

    wav = gen.bases["wav16"]
    structural = [
        lambda: ("json-body", b'{"audio": "aGVsbG8="}', "application/json", "refused"),
        lambda: ("text-plain", wav, "text/plain", "refused"),
        lambda: ("urlencoded", b"audio=" + r.randbytes(50).hex().encode(), "application/x-www-form-urlencoded", "refused"),
        lambda: ("raw-audio-wav", wav, "audio/wav", "refused"),
        lambda: ("octet-stream", gen.bases["flac"], "application/octet-stream", "refused"),
        lambda: ("no-content-type", wav, None, "refused"),
        lambda: ("multipart-mixed", form([("audio", "a.wav", wav)])[0], "multipart/mixed; boundary=x", "refused"),
        lambda: ("multipart-no-boundary", form([("audio", "a.wav", wav)])[0], "multipart/form-data", "refused"),
        lambda: ("boundary-mismatch", form([("audio", "a.wav", wav)])[0], "multipart/form-data; boundary=nope", "refused"),
        lambda: ("multipart-garbage", r.randbytes(300), "multipart/form-data; boundary=xyz", "refused"),
        lambda: ("empty-multipart", b"--b--\r\n", "multipart/form-data; boundary=b", "refused"),
        lambda: ("no-closing-boundary", form([("audio", "a.wav", wav)], boundary="bb")[0][:-8],
                 "multipart/form-data; boundary=bb", "any"),
        lambda: ("audio-as-text-url", *form([("audio", None, "http://127.0.0.1:9/a.wav")]), "refused"),
        lambda: ("audio-as-text-base64", *form([("audio", None, "UklGRiQAAABXQVZF")]), "refused"),
        lambda: ("audio-missing", *form([("sound", "a.wav", wav)]), "refused"),
        lambda: ("huge-part-header", *form([("audio", "a.wav", wav)],
                                           part_headers=f"X-Junk: {'q' * r.choice([70_000, 250_000])}\r\n"), "any"),
        lambda: ("many-part-headers", *form([("audio", "a.wav", wav)], part_headers="".join(
            f"X-H{i}: v\r\n" for i in range(r.choice([500, 5000])))), "any"),
        lambda: ("huge-filename", *form([("audio", "n" * r.choice([5000, 100_000]) + ".wav", wav)]), "any"),
        lambda: ("path-filename", *form([("audio", "../../../etc/passwd\x00.wav", wav)]), "any"),
        lambda: ("huge-boundary", *form([("audio", "a.wav", wav)], boundary="B" * 5000), "any"),
        lambda: ("two-audio-fields", *form([("audio", "a.wav", wav), ("audio", "b.wav", r.randbytes(100))]), "any"),
        lambda: ("empty-filename", *form([("audio", "", wav)]), "any"),
    ]
    bad_top_k = ["", "NaN", "1e3", "-1", "0", "51", "0x10", "9" * 400, "3.0", " 3 ", "\uff15", "true", "[3]", "3; DROP TABLE"]
    bad_hop = ["nan", "inf", "-inf", "-0", "0", "5.0001", "1e300", "abc", ""]

    while len(cases) < n:
        roll = r.random()
        if roll < 0.62:  # file contents: /classify mostly, every upload route sometimes
            route = r.choices(["/classify", "/spectrogram", "/timeline", "/classify_batch"], weights=[6, 1, 1, 1])[0]
            name, data, expect = gen.payload(timeline=route == "/timeline")
            if route == "/classify_batch":
                others = [gen.payload() for _ in range(r.randint(0, 2))]
                files = [(name, data, expect), *others]
                body, ctype = form([("audio", f"{i}.wav", d) for i, (_, d, _) in enumerate(files)])
                cases.append(Case(f"http/classify_batch:{'+'.join(f[0] for f in files)}", "http", "ok",
                                  route=route, body=body, content_type=ctype,
                                  items=tuple(_expectation(e)[0] for _, _, e in files)))
            else:
                cases.append(upload_case(route, name, data, expect))
        elif roll < 0.85:  # the request itself is wrong
            name, body, ctype, expect = r.choice(structural)()
            route = r.choice(["/classify", "/classify", "/spectrogram", "/timeline", "/classify_batch"])
            cases.append(Case(f"http{route}:{name}", "http", expect, route=route, body=body, content_type=ctype))
        elif roll < 0.95:  # a text field that is out of range or not a number
            if r.random() < 0.7:
                value = r.choice(bad_top_k)
                cases.append(upload_case("/classify", f"top_k={value[:20]!r}", gen.bases["wav16"], "any", {"top_k": value}))
            else:
                value = r.choice(bad_hop)
                cases.append(upload_case("/timeline", f"hop_s={value!r}", gen.bases["wav16"], "any", {"hop_s": value}))
        else:  # huge request headers
            body, ctype = form([("audio", "a.wav", gen.bases["wav16"])])
            headers = (("x-junk", "j" * r.choice([8_000, 60_000, 200_000])),) if r.random() < 0.5 else tuple(
                (f"x-h{i}", "v" * 40) for i in range(r.choice([200, 2000])))
            # Heads beyond SOUND_MAX_HEAD_KB get 431 (serving/edge.py); smaller ones are served.
            size = sum(len(k) + len(v) + 4 for k, v in headers)
            over = size + 1024 > Settings().max_head_kb * 1024  # + the request line and usual headers
            cases.append(Case(f"http/classify:huge-request-headers({size}B)", "http", "refused" if over else "ok",
                              frozenset({431}) if over else frozenset(), body=body, content_type=ctype,
                              headers=headers, rate=af.RATE))
    return cases


def grpc_cases(gen: Generator, n: int) -> list[Case]:
    r = gen.rng
    cases: list[Case] = []
    top_ks = [0, 0, 0, 1, 5, 50, 51, 1000, 2**32 - 1]
    hops = [0.0, 0.0, 2.5, 5.0, 5.0001, -1.0, math.nan, math.inf, -math.inf, 1e-300, 1e300]

    def chunks(data: bytes, make, **first):
        out, i = [], 0
        while i < len(data):
            size = r.choice([0, 1, 7, 1024, 65536, len(data)])
            out.append(make(data=data[i : i + size], **(first if not out else {})))
            i += size
        if out and r.random() < 0.2:  # empty chunks are allowed anywhere after the first
            out.insert(r.randrange(1, len(out) + 1), make(data=b""))
        return tuple(out) or (make(data=b"", **first),)

    while len(cases) < n:
        roll = r.random()
        top_k = r.choice(top_ks)
        bad_k = not top_k <= 50
        if roll < 0.55:
            name, data, expect = gen.payload()
            kind, rate = _expectation(expect)
            cases.append(Case(f"grpc/Classify:{name}:top_k={top_k}", "grpc", "refused" if bad_k else kind,
                              frozenset({"INVALID_ARGUMENT"}) if bad_k else frozenset(), rate=rate, method="Classify",
                              messages=(pb.ClassifyRequest(audio=data, filename=name[:100], top_k=top_k),)))
        elif roll < 0.8:
            name, data, expect = gen.payload()
            kind, rate = _expectation(expect)
            cases.append(Case(f"grpc/ClassifyStream:{name}:top_k={top_k}", "grpc", "refused" if bad_k else kind,
                              frozenset({"INVALID_ARGUMENT"}) if bad_k else frozenset(), rate=rate,
                              method="ClassifyStream", messages=chunks(data, pb.AudioChunk, top_k=top_k)))
        elif roll < 0.95:
            name, data, expect = gen.payload(timeline=True)
            kind, rate = _expectation(expect)
            hop = r.choice(hops)
            bad_hop = not (hop == 0 or 0 < hop <= 5.0)
            refused = bad_k or bad_hop
            cases.append(Case(f"grpc/Timeline:{name}:top_k={top_k}:hop_s={hop}", "grpc", "refused" if refused else kind,
                              frozenset({"INVALID_ARGUMENT"}) if refused else frozenset(), rate=rate,
                              method="Timeline", messages=chunks(data, pb.TimelineChunk, top_k=top_k, hop_s=hop)))
        else:  # a stream without chunks
            method = r.choice(["ClassifyStream", "Timeline"])
            cases.append(Case(f"grpc/{method}:no-chunks", "grpc", "refused", frozenset({"INVALID_ARGUMENT"}),
                              method=method, messages=()))
    # Over the 5 MB limit, once each (the slowest requests: megabytes through the Python client).
    size = MAX_BYTES + 2 * 2**20
    cases[-2:] = [
        Case(f"grpc/Classify:oversize-{size}B", "grpc", "refused", frozenset({"RESOURCE_EXHAUSTED"}),
             method="Classify", messages=(pb.ClassifyRequest(audio=bytes(size)),)),
        Case(f"grpc/ClassifyStream:oversize-{size}B", "grpc", "refused", frozenset({"RESOURCE_EXHAUSTED"}),
             method="ClassifyStream", messages=tuple(pb.AudioChunk(data=bytes(2**20)) for _ in range(size // 2**20))),
    ]
    return cases


def all_cases(seed: int = SEED, size: int = ROUND_SIZE) -> list[Case]:
    gen = Generator(seed)
    n_http = round(size * 0.62)
    return http_cases(gen, n_http) + grpc_cases(gen, size - n_http)


# --- sending and judging ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: str  # HTTP status code or gRPC code name, or "transport:<error>"
    content_type: str = ""
    body: bytes = b""
    details: str = ""
    reply: object = None


@dataclass
class Outcome:
    answers: list[tuple[Case, Answer]] = field(default_factory=list)

    def failures(self) -> list[str]:
        return [f"{case.name}\n    request: {case.describe()}\n    problem: {problem}"
                for case, answer in self.answers if (problem := judge(case, answer))]

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, a in self.answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        return dict(sorted(counts.items()))


async def send_all(cases: list[Case], base_url: str, grpc_target: str) -> Outcome:
    outcome = Outcome()
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

    async def one(case: Case, http: httpx.AsyncClient, stub: pb_grpc.SoundClassifierStub) -> None:
        async with gate:
            outcome.answers.append((case, await _send(case, http, stub)))

    # gRPC through the blocking client in threads: grpc.aio's client reports a write that races
    # the server's abort of a stream as its own INTERNAL "Internal error from Core" (grpc/aio/_call.py
    # `_write`), hiding the status the server sent; the blocking client reports the server's.
    with grpc.insecure_channel(grpc_target, options=options) as channel:
        async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT_S, limits=limits) as http:
            stub = pb_grpc.SoundClassifierStub(channel)
            await asyncio.gather(*(one(c, http, stub) for c in cases))
    return outcome


async def _send(case: Case, http: httpx.AsyncClient, stub: pb_grpc.SoundClassifierStub) -> Answer:
    if case.transport == "http":
        headers = dict(case.headers)
        if case.content_type is not None:
            headers["content-type"] = case.content_type
        try:
            r = await http.post(case.route, content=case.body, headers=headers)
        except httpx.HTTPError as e:
            return Answer(f"transport:{type(e).__name__}: {e}")
        return Answer(str(r.status_code), r.headers.get("content-type", ""), r.content)
    call = getattr(stub, case.method)
    request = case.messages[0] if case.method == "Classify" else iter(case.messages)
    try:
        reply = await asyncio.to_thread(call, request, timeout=TIMEOUT_S)
    except grpc.RpcError as e:
        return Answer(e.code().name, details=e.details() or "")
    return Answer("OK", reply=reply)


def run_round(served, cases: list[Case]) -> Outcome:
    return asyncio.run(send_all(cases, served.base_url, f"127.0.0.1:{served.grpc_port}"))


def _problem_json(answer: Answer) -> str | None:
    if not answer.content_type.startswith("application/json"):
        return f"refusal is not JSON ({answer.content_type!r}): {answer.body[:200]!r}"
    try:
        body = httpx.Response(200, content=answer.body).json()
    except ValueError:
        return f"refusal is not valid JSON: {answer.body[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"] or not body.get("detail"):
        return f"refusal does not name the problem (error + detail): {answer.body[:300]!r}"
    return None


def _http_ok(case: Case, answer: Answer) -> str | None:
    if case.route == "/spectrogram":
        ok = answer.content_type == "image/png" and answer.body.startswith(b"\x89PNG\r\n\x1a\n")
        return None if ok else f"200 without a PNG ({answer.content_type})"
    try:
        body = httpx.Response(200, content=answer.body).json()
    except ValueError:
        return f"200 whose body is not JSON: {answer.body[:200]!r}"
    if case.route == "/classify_batch":
        if not isinstance(body, list) or not body or (case.items and len(body) != len(case.items)):
            return f"batch answer has {len(body) if isinstance(body, list) else '?'} entries: {answer.body[:300]!r}"
        for item, expect in zip(body, case.items or ("any",) * len(body), strict=True):
            refused = item.get("result") is None
            if refused and not (item.get("error") and item.get("detail")):
                return f"batch entry refused without naming the problem: {item}"
            if (expect == "ok" and refused) or (expect == "refused" and not refused):
                return f"batch entry should be {expect}: {item}"
        return None
    if case.route == "/timeline":
        return None if body.get("windows") else f"timeline without windows: {answer.body[:300]!r}"
    top = body.get("top")
    if not top or not all(0.0 <= s["probability"] <= 1.0 for s in top):
        return f"200 without a classification: {answer.body[:300]!r}"
    if case.rate is not None and body.get("sample_rate") != case.rate:
        return f"sample_rate {body.get('sample_rate')} != {case.rate}"
    return None


def judge(case: Case, answer: Answer) -> str | None:
    """None if the answer is acceptable for the case, else what is wrong."""
    if answer.status.startswith("transport:"):
        return f"no answer: {answer.status}"
    if case.transport == "http":
        status = int(answer.status)
        if status >= 500:
            return f"HTTP {status}: {answer.body[:300]!r}"
        if status == 200:
            if case.expect == "refused":
                return f"HTTP 200 for a request that must be refused: {answer.body[:200]!r}"
            return _http_ok(case, answer)
        if case.expect == "ok":
            return f"HTTP {status} for a request that must succeed: {answer.body[:300]!r}"
        if status not in (case.allowed or HTTP_REFUSALS):
            return f"HTTP {status}, expected one of {sorted(case.allowed or HTTP_REFUSALS)}: {answer.body[:300]!r}"
        return _problem_json(answer)
    if answer.status == "OK":
        if case.expect == "refused":
            return f"OK for a call that must be refused ({case.allowed or 'a refusal'})"
        reply = answer.reply
        if case.method == "Timeline":
            return None if reply.windows else "Timeline OK without windows"
        if not reply.top:
            return "OK without labels"
        if case.rate is not None and reply.sample_rate != case.rate:
            return f"sample_rate {reply.sample_rate} != {case.rate}"
        return None
    if case.expect == "ok":
        return f"{answer.status} ({answer.details}) for a call that must succeed"
    if answer.status not in (case.allowed or GRPC_REFUSALS):
        return f"{answer.status} ({answer.details}), expected one of {sorted(case.allowed or GRPC_REFUSALS)}"
    return None if answer.details.strip() else f"{answer.status} without details"


def save_failures(outcome: Outcome, tag: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i, (case, answer) in enumerate(outcome.answers):
        if judge(case, answer) and case.transport == "http":
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", case.name)[:100]
            (ARTIFACTS / f"{tag}-{i:03d}-{stem}.body").write_bytes(case.body)
            (ARTIFACTS / f"{tag}-{i:03d}-{stem}.curl").write_text(
                f"curl -sS -X POST -H 'content-type: {case.content_type}' --data-binary @{tag}-{i:03d}-{stem}.body "
                f"http://127.0.0.1:3000{case.route}\n")
    return ARTIFACTS


def server_rss_mb(served) -> float:
    root = psutil.Process(served.process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def worker_processes(served) -> list[psutil.Process]:
    workers = [p for p in psutil.Process(served.process.pid).children(recursive=True)
               if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    assert workers, "no BentoML worker process found"
    return workers


def worker_peak_rss_mb(served) -> float:
    """The largest peak resident memory (VmHWM) among the server's processes, MB."""
    peaks = []
    for p in [psutil.Process(served.process.pid), *psutil.Process(served.process.pid).children(recursive=True)]:
        status = Path(f"/proc/{p.pid}/status").read_text()
        peaks.append(int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024)
    return max(peaks)


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return all_cases()


@pytest.fixture(scope="module")
def first_round(served, cases) -> Outcome:
    return run_round(served, cases)


def test_generator_is_seeded_and_varied(cases):
    assert len(cases) >= 500
    assert [c.name for c in all_cases()] == [c.name for c in cases]  # same seed, same requests
    assert sum(c.transport == "grpc" for c in cases) >= 150 and sum(c.transport == "http" for c in cases) >= 300
    kinds = {re.split(r"[:\[@(=]", c.name.split(":", 1)[1])[0].split("-")[0] for c in cases}
    for kind in ("random", "magic", "truncated", "mutated", "crafted", "gigabyte", "odd", "non", "huge", "top_k",
                 "json", "audio"):
        assert kind in kinds, kind
    assert {c.expect for c in cases} == {"ok", "refused", "any"}


def test_fuzz_never_fails_the_server_and_every_refusal_names_the_problem(first_round):
    failures = first_round.failures()
    if failures:
        save_failures(first_round, "round1")
    assert not failures, f"{len(failures)} of {len(first_round.answers)} requests answered wrongly " \
                         f"(bodies in {ARTIFACTS}):\n" + "\n".join(failures[:25])
    statuses = first_round.statuses()
    assert statuses.get("200", 0) + statuses.get("OK", 0) >= 50, statuses  # valid odd files got through
    assert sum(n for s, n in statuses.items() if s in {"400", "413", "415", "422"}) >= 100, statuses


def test_memory_does_not_keep_growing(served, cases, first_round):
    before = server_rss_mb(served)
    second = run_round(served, cases + cases)
    after = server_rss_mb(served)
    assert len(second.answers) == 2 * len(cases)
    assert not [c.name for c, a in second.answers if a.status.startswith("transport:")]
    margin = RSS_MARGIN_MB * len(worker_processes(served))
    assert after - before <= margin, (
        f"server RSS grew {before:.0f} -> {after:.0f} MB over {2 * len(cases)} requests (margin {margin:g} MB)")


@pytest.mark.parametrize("name,data,rate", odd_valid_files(), ids=[f[0] for f in odd_valid_files()])
def test_valid_but_odd_files_are_classified(served, name, data, rate):
    r = httpx.post(f"{served.base_url}/classify", files={"audio": (f"{name}.wav", data)}, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.json()["sample_rate"] == rate and r.json()["top"]
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        reply = pb_grpc.SoundClassifierStub(channel).Classify(pb.ClassifyRequest(audio=data, top_k=2), timeout=TIMEOUT_S)
    assert reply.sample_rate == rate and len(reply.top) == 2


def test_server_is_healthy_after_the_fuzz(served, first_round):
    assert served.process.poll() is None
    assert httpx.get(f"{served.base_url}/readyz", timeout=10).status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc.SoundClassifierStub(channel).Classify(pb.ClassifyRequest(audio=af.wav_sine()), timeout=30).top
    r = httpx.post(f"{served.base_url}/classify", files={"audio": ("a.wav", af.wav_noise())}, timeout=TIMEOUT_S)
    assert r.status_code == 200 and r.json()["top"]


def test_short_soak_mixed_good_and_bad(served):
    from bench.soak import soak

    result = asyncio.run(soak(served.base_url, clients=64, seconds=10.0, seed=1))
    # A rare client-side ReadError here was a keep-alive race (server and httpx both at 5 s; see
    # SOUND_KEEP_ALIVE_S, serving/edge.py). Should any transport error come back, show the server's side.
    warnings = [line for line in served.log().splitlines() if re.search(r"WARNING|ERROR|Traceback|Exception", line)]
    assert result["errors"] == 0, (result["failures"], warnings[-40:])
    assert result["good_ok"] >= 64 and result["bad_refused_correctly"] >= 16, result
    assert result["readyz_after"] == 200


# --- regressions found by fuzzing ------------------------------------------------------------------

# A WAV header may claim any sample rate up to 2**32 - 1. torchaudio's resampler builds a kernel of
# (22050 / g) x (rate / g) elements, g = gcd(rate, 22050): for a rate coprime with 22050 the size
# is ~22050 x rate. At 10,000,019 Hz that is 1.8 TB, refused at once by the allocator, and the
# RuntimeError escaped as HTTP 500 / gRPC UNKNOWN. (Chosen that large so that no machine can
# actually satisfy the allocation; smaller rates are worse, see the next test.)
HUGE_RATE = 10_000_019


def huge_rate_wav() -> bytes:
    return af.encode(af.sine(1000.0, 0.01, HUGE_RATE), HUGE_RATE, "WAV", "PCM_16")


@pytest.mark.parametrize("route", ["/classify", "/spectrogram", "/timeline"])
def test_regression_extreme_sample_rate_is_refused_not_a_server_error(served, route):
    r = httpx.post(f"{served.base_url}{route}", files={"audio": ("odd-rate.wav", huge_rate_wav())}, timeout=TIMEOUT_S)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert _problem_json(Answer(str(r.status_code), r.headers.get("content-type", ""), r.content)) is None


def test_regression_extreme_sample_rate_in_a_batch_fails_only_its_entry(served):
    files = [("audio", ("odd-rate.wav", huge_rate_wav())), ("audio", ("good.wav", af.wav_sine()))]
    r = httpx.post(f"{served.base_url}/classify_batch", files=files, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    odd, good = r.json()
    assert odd["result"] is None and odd["error"] and odd["detail"]
    assert good["result"]["top"]


def test_regression_extreme_sample_rate_over_grpc_is_invalid_argument(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.SoundClassifierStub(channel).Classify(pb.ClassifyRequest(audio=huge_rate_wav()), timeout=TIMEOUT_S)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.value.code(), e.value.details())
    assert e.value.details()


# The same kernel at rates the allocator grants: a 0.05-s WAV at 2003 Hz (coprime with 22050) made
# the worker allocate ~0.7 GB and spend seconds on one request; 4001 Hz ~1.4 GB; by the same
# arithmetic 44,101 Hz needs ~16 GB, enough to get the worker killed. One small upload must not
# cost the server more than a few hundred MB, whatever rate its header claims.
ODD_RATE = 2003
MAX_PEAK_GROWTH_MB = 256.0


def test_regression_odd_sample_rate_does_not_cost_the_server_gigabytes(served):
    data = af.encode(af.sine(300.0, 0.05, ODD_RATE), ODD_RATE, "WAV", "PCM_16")
    # warm up with a cheap rate so the baseline peak includes an ordinary request
    httpx.post(f"{served.base_url}/classify", files={"audio": ("ok.wav", af.wav_sine())}, timeout=TIMEOUT_S)
    before = worker_peak_rss_mb(served)
    r = httpx.post(f"{served.base_url}/classify", files={"audio": ("odd-rate.wav", data)}, timeout=TIMEOUT_S)
    after = worker_peak_rss_mb(served)
    assert r.status_code < 500, r.text
    assert after - before <= MAX_PEAK_GROWTH_MB, (
        f"one {len(data):,}-byte upload at {ODD_RATE} Hz raised the server's peak memory by "
        f"{after - before:.0f} MB ({before:.0f} -> {after:.0f} MB); answer {r.status_code}")
