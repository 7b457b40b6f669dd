"""A bare uvicorn server with serving.edge installed, for tests/test_edge.py.

    python -m testkit.edge_app --port 8123 --head 1 --body 1 --send 1 --keep-alive 75 --cancel-log /tmp/c.log

Routes: POST /echo reads the body and answers its length; POST /lazy the same, after 3 s; POST /slow reads the body, then sleeps
30 s in small steps and appends "cancelled <seconds>" to --cancel-log if it is cancelled; GET
/big answers 8 MiB (for a client that does not read); a WebSocket on any path echoes text. uvicorn runs exactly as BentoML runs it: a
Config with http left at "auto", then Server.run; the limits come from install().
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn

from serving.edge import CancelOnDisconnect, EdgeLimits, install


def make_app(cancel_log: str, cancel_on_disconnect: bool = True):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":  # echoes text frames
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text") or ""})
            return
        size = 0
        if scope["path"] == "/lazy":  # reads its body only after 3 s: the server, not the client, is slow
            await asyncio.sleep(3)
        if scope["method"] == "POST":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        if scope["path"] == "/slow":
            start = time.monotonic()
            try:
                for _ in range(3000):
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                with open(cancel_log, "a") as f:
                    f.write(f"cancelled {time.monotonic() - start:.3f} {time.time():.3f}\n")
                raise
        body = b"x" * (8 << 20) if scope["path"] == "/big" else str(size).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return CancelOnDisconnect(app) if cancel_on_disconnect else app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--head", type=float, default=30.0)
    ap.add_argument("--body", type=float, default=30.0)
    ap.add_argument("--send", type=float, default=60.0)
    ap.add_argument("--max-head", type=int, default=64 * 1024)
    ap.add_argument("--keep-alive", type=float, default=75.0)
    ap.add_argument("--min-rate", type=float, default=1024.0, help="bytes/s a body must average")
    ap.add_argument("--max-connections", type=int, default=1024)
    ap.add_argument("--cancel-log", default="/dev/null")
    ap.add_argument("--plain", action="store_true", help="uvicorn's own protocol (for A/B timings)")
    ap.add_argument("--no-cancel", action="store_true", help="without CancelOnDisconnect (for A/B timings)")
    args = ap.parse_args()
    if not args.plain:
        install(EdgeLimits(head_timeout_s=args.head, body_idle_s=args.body, send_idle_s=args.send,
                           max_head_bytes=args.max_head, keep_alive_s=args.keep_alive,
                           min_body_rate=args.min_rate, max_connections=args.max_connections))
    config = uvicorn.Config(make_app(args.cancel_log, not args.no_cancel), host="127.0.0.1", port=args.port, log_config=None,
                            server_header=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
