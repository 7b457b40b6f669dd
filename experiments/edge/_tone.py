"""A 1-s 440 Hz WAV (16 kHz, mono) for the edge experiments, written once to the temp directory."""

import math
import struct
import tempfile
import wave
from pathlib import Path

TONE = Path(tempfile.gettempdir()) / "edge-tone.wav"


def tone_bytes() -> bytes:
    if not TONE.exists():
        with wave.open(str(TONE), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(
                b"".join(
                    struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000)))
                    for i in range(16000)
                )
            )
    return TONE.read_bytes()
