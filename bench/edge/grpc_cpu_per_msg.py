import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil

N = 50000
procs = {
    v: subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("grpc_server_proc.py")), str(p), v],
        stderr=subprocess.DEVNULL,
    )
    for p, v in ((50641, "plain"), (50642, "budget"), (50643, "pass"))
}
ports = {"plain": 50641, "budget": 50642, "pass": 50643}
time.sleep(3)


async def run(v):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[v]}") as ch:
        up = ch.stream_unary("/edge.Test/Upload")

        async def flood():
            for _ in range(N):
                yield b""

        p = psutil.Process(procs[v].pid)
        c = p.cpu_times()
        c0 = c.user + c.system
        await up(flood())
        c = p.cpu_times()
        return (c.user + c.system - c0) / N * 1e6


res = {"plain": [], "budget": [], "pass": []}
for _ in range(3):
    for v in ("plain", "budget", "pass"):
        res[v].append(round(asyncio.run(run(v)), 1))
print("server CPU us per empty message:", res)
for pr in procs.values():
    pr.terminate()
