"""WebSocket /listen: the live-stream door over the core's session (soundclassifier/listen.py).

    ws://HOST:3000/listen?sample_rate=16000[&hop_s=0.5&top_k=3&min_confidence=0.5&smoothing=5]

In: binary messages of little-endian 16-bit mono PCM at `sample_rate`, any size up to
SOUND_LISTEN_MAX_FRAME_KB; the text message `end` says no more audio follows (the server answers
the rest, then closes with 1000). Out: one JSON text message per window, the same shape as a
/timeline window, and event messages; on an error, `{"error", "detail"}` and then a close code
and reason (serving/errors.py `ws_close`). The contract is docs/design.md's "Live listening".

Mounted at / by service.py beside the page's front door (BentoML's mount only claims a path one
of the app's routes matches). The upload guard and CancelOnDisconnect pass WebSocket scopes
through untouched; the HTTP protocol hands the connection to uvicorn's WebSocket protocol on
upgrade (serving/edge.py: `handle_websocket_upgrade`, and `ws_limits` for its message size).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serving.errors import STREAM_ERRORS, error_body, ws_close
from soundclassifier.errors import AudioError, ErrorKind
from soundclassifier.pipeline import Pipeline

END = "end"  # the text message that ends the audio


async def _frames(websocket: WebSocket) -> AsyncIterator[bytes]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        if message.get("bytes") is not None:
            yield message["bytes"]
        elif message.get("text") == END:
            return
        else:
            raise AudioError(ErrorKind.UNSUPPORTED, "send audio as binary messages of 16-bit PCM; the only text "
                                                    f"message is '{END}'")


async def listen(websocket: WebSocket) -> None:
    pipeline: Pipeline = websocket.app.state.pipeline
    # Accepted first, so that a refusal can carry a close code and a reason (a refused handshake
    # is a bare HTTP 403).
    await websocket.accept()
    try:
        with pipeline.listen(**websocket.query_params) as session:
            async for message in session.run(_frames(websocket)):
                await websocket.send_text(message.model_dump_json(exclude_none=True))
    except WebSocketDisconnect:
        return
    except STREAM_ERRORS as e:
        code, reason = ws_close(e)
        try:
            await websocket.send_json(error_body(e))
            await websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError):  # the client went first
            pass
        return
    await websocket.close(1000)


app = Starlette(routes=[WebSocketRoute("/listen", listen)])
