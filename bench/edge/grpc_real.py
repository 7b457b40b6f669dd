import asyncio
import json
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.edge._tone import tone_bytes
from serving.grpc_stubs.soundclassifier.v1 import (
    sound_classifier_pb2 as pb,
)
from serving.grpc_stubs.soundclassifier.v1 import (
    sound_classifier_pb2_grpc as pb_grpc,
)

port = sys.argv[1]
wav = tone_bytes()


async def main():
    out = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.SoundClassifierStub(ch)
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        out["health"] = h.status

        async def chunks():
            for i in range(0, len(wav), 8192):
                yield pb.AudioChunk(data=wav[i : i + 8192], top_k=3)

        r = await stub.ClassifyStream(chunks())
        out["classify_stream_top"] = r.top[0].label

        async def idle():
            yield pb.TimelineChunk(data=wav[:100])
            await asyncio.sleep(120)

        async def one():
            t = time.monotonic()
            try:
                await stub.Timeline(idle())
                return "ok", 0
            except grpc.aio.AioRpcError as e:
                return e.code().name, round(time.monotonic() - t, 1)

        res = await asyncio.gather(*(one() for _ in range(64)))
        out["64_idle_timeline_streams"] = {
            "codes": sorted({c for c, _ in res}),
            "ended_after_s": [min(t for _, t in res), max(t for _, t in res)],
        }

        async def flood():
            yield pb.AudioChunk(data=b"", top_k=3)
            for _ in range(200000):
                yield pb.AudioChunk()

        t = time.monotonic()
        try:
            await stub.ClassifyStream(flood())
        except grpc.aio.AioRpcError as e:
            out["empty_chunk_flood"] = [e.code().name, e.details(), round(time.monotonic() - t, 1)]
    print(json.dumps(out, indent=1))


asyncio.run(main())
