"""Command-line client: classify files with a running service and print a readable table.

    classify dog.wav rain.flac --url http://localhost:3000 --top-k 3
    python -m serving.client dog.wav            # the same, without the console script
    classify --listen street.wav --realtime     # stream a recording to /listen as if it were live
    arecord -q -t raw -f S16_LE -c 1 -r 16000 | classify --listen - --rate 16000    # the microphone

`--listen -` streams raw 16-bit little-endian mono PCM from standard input as it arrives, so any
recorder that writes it (arecord, `ffmpeg -f pulse -i default -ac 1 -f s16le -`, sox) is a live
source; the client itself needs no audio library.

Each file's line: its duration, the service's label, and the top labels. When the model's rule
says "unknown", the line names the best guess and why it was not taken (`unknown (best guess
clock_tick 62.3%, unlike the sounds the model was trained on)`, or for models stored before that
rule, `..., below the 63% threshold`): the client sends no min_confidence, so the rule is the
model's stored one, read once from POST /info.

Exit code 0 when every file was classified (or the stream ended normally), 1 when any file was
refused (its reason is printed), 2 when the service could not be reached or answered with a
server error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

FRAME_S = 0.1  # audio per WebSocket message when streaming a file
UNKNOWN = "unknown"  # the service's label for a clip its rule rejects (soundclassifier.predictions.UNKNOWN)


def verdict(body: dict, rule: tuple[str, float] | None) -> str:
    """The label of one /classify answer as a person should read it: "unknown" with its best guess
    and why it was not taken, by the model's rule (score, threshold; None: not known)."""
    if body["label"] != UNKNOWN:
        return body["label"]
    best = body["top"][0]
    if rule is not None and rule[0] == "familiarity":
        why = "unlike the sounds the model was trained on"
    else:
        why = "below the model's threshold" if rule is None else f"below the {round(100 * rule[1], 1):g}% threshold"
    return f"{UNKNOWN} (best guess {best['label']} {best['probability']:.1%}, {why})"


def stored_rule(client: httpx.Client) -> tuple[str, float] | None:
    """The model's rule for "unknown" (POST /info: its score and threshold), which applies when a
    request gives no min_confidence."""
    try:
        r = client.post("/info")
        if r.status_code != 200:
            return None
        rule = r.json()["unknown_rule"]
        return str(rule["score"]), float(rule["threshold"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="classify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="audio files (WAV, FLAC, OGG, MP3)")
    p.add_argument("--url", default="http://localhost:3000", help="service address (default %(default)s)")
    p.add_argument("--top-k", type=int, default=3, help="labels per file (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    p.add_argument("--listen", type=Path, metavar="FILE",
                   help="stream FILE's audio to the live-listening WebSocket and print windows and events; "
                   "FILE - reads raw 16-bit little-endian mono PCM from standard input as it arrives")
    p.add_argument("--realtime", action="store_true", help="with --listen FILE: send the audio at real speed")
    p.add_argument("--rate", type=int, default=16000, help="with --listen -: the PCM's sample rate (default %(default)s)")
    p.add_argument("--hop-s", type=float, help="with --listen: seconds between windows (server default 0.5)")
    p.add_argument("--smoothing", type=int, help="with --listen: windows in the median events follow")
    p.add_argument("--min-confidence", type=float, help='with --listen: "unknown" below this probability')
    a = p.parse_args(argv)
    if a.listen is not None:
        return asyncio.run(listen(a))
    if not a.files:
        p.error("give audio files to classify, or --listen FILE")

    refused, rule, asked = 0, None, False  # the rule is asked for at the first "unknown"
    width = max(len(str(f)) for f in a.files)
    with httpx.Client(base_url=a.url, timeout=a.timeout) as client:
        for path in a.files:
            try:
                data = path.read_bytes()
            except OSError as e:
                print(f"{str(path):<{width}}  error: cannot read ({e.strerror})")
                refused += 1
                continue
            try:
                r = client.post("/classify", files={"audio": (path.name, data)}, data={"top_k": str(a.top_k)})
            except httpx.HTTPError as e:
                print(f"cannot reach {a.url}: {e}", file=sys.stderr)
                return 2
            if r.status_code >= 500:
                print(f"{str(path):<{width}}  server error {r.status_code}: {r.text[:200]}", file=sys.stderr)
                return 2
            body = r.json()
            if r.status_code != 200:
                detail = body.get("detail") if isinstance(body, dict) else body
                print(f"{str(path):<{width}}  refused ({r.status_code}): {detail}")
                refused += 1
                continue
            if body["label"] == UNKNOWN and not asked:
                rule, asked = stored_rule(client), True
            top = "  ".join(f"{t['label']} {t['probability']:6.1%}" for t in body["top"])
            print(f"{str(path):<{width}}  {body['duration_s']:6.2f} s  {verdict(body, rule):<14}  {top}")
    return 1 if refused else 0


def pcm16_mono(path: Path) -> tuple[bytes, int]:
    """A file's audio as little-endian 16-bit mono PCM (a mono 16-bit file's samples as they are)."""
    info = sf.info(str(path))
    if info.channels == 1:
        samples, rate = sf.read(str(path), dtype="int16")
    else:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
        samples = np.round(np.clip(x.mean(axis=1), -1, 1) * 32767).astype(np.int16)
    return samples.astype("<i2").tobytes(), rate


def _show(message: dict) -> str:
    if "event" in message:
        if message["event"] == "start":
            return f">> {message['label']} from {message['start_s']:.2f} s"
        return f"<< {message['label']} from {message['start_s']:.2f} s to {message['end_s']:.2f} s"
    if "error" in message:
        return f"refused ({message['error']}): {message['detail']}"
    top = "  ".join(f"{t['label']} {t['probability']:6.1%}" for t in message["top"])
    return f"{message['start_s']:7.2f}-{message['end_s']:7.2f} s  {message['label']:<14}  {top}"


async def file_frames(data: bytes, rate: int, realtime: bool):
    """A recording's PCM in FRAME_S pieces, at real speed when `realtime`."""
    frame, start = 2 * max(1, round(FRAME_S * rate)), time.monotonic()
    for i, at in enumerate(range(0, len(data), frame)):
        if realtime:
            await asyncio.sleep(max(0.0, start + i * FRAME_S - time.monotonic()))
        yield data[at : at + frame]


async def stdin_frames(rate: int):
    """Standard input's PCM as it arrives, FRAME_S at a time (a pipe's read blocks until then)."""
    frame = 2 * max(1, round(FRAME_S * rate))
    while chunk := await asyncio.to_thread(sys.stdin.buffer.read, frame):
        yield chunk[: len(chunk) // 2 * 2]  # a recorder stopped mid-sample: drop the half sample


async def listen(a: argparse.Namespace) -> int:
    """Stream a file (at real speed with --realtime) or standard input to WebSocket /listen; print
    what comes back."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    if str(a.listen) == "-":
        rate, frames = a.rate, stdin_frames(a.rate)
        print(f"standard input: 16-bit mono PCM at {rate} Hz", flush=True)
    else:
        try:
            data, rate = pcm16_mono(a.listen)
        except (OSError, sf.LibsndfileError) as e:
            print(f"{a.listen}: cannot read ({e})", file=sys.stderr)
            return 1
        frames = file_frames(data, rate, a.realtime)
        print(f"{a.listen}: {len(data) / 2 / rate:.2f} s at {rate} Hz", flush=True)
    query = {"sample_rate": rate, "top_k": a.top_k, "hop_s": a.hop_s, "smoothing": a.smoothing,
             "min_confidence": a.min_confidence}
    url = a.url.replace("http", "ws", 1).rstrip("/") + "/listen?" + "&".join(
        f"{k}={v}" for k, v in query.items() if v is not None)
    try:
        async with connect(url, max_size=None) as ws:
            async def send() -> None:
                try:
                    async for piece in frames:
                        if piece:
                            await ws.send(piece)
                    await ws.send("end")
                except ConnectionClosed:  # the server closed first: its reason is read below
                    pass

            sender = asyncio.create_task(send())
            try:
                async for text in ws:
                    print(_show(json.loads(text)), flush=True)
            except ConnectionClosed:
                pass
            finally:
                sender.cancel()
            code, reason = ws.close_code, ws.close_reason
    except (OSError, TimeoutError) as e:
        print(f"cannot reach {url}: {e}", file=sys.stderr)
        return 2
    if code != 1000:
        print(f"closed with {code}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
