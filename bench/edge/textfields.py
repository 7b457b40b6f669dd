import sys

import httpx

from bench.edge._tone import tone_bytes

B = f"http://127.0.0.1:{sys.argv[1]}"
wav = tone_bytes()
big, nested = "1" * 5000, "[" * 100000 + "]" * 100000
c = httpx.Client(timeout=60)
rows = []
for route, field in [
    ("/classify", "top_k"),
    ("/classify_batch", "top_k"),
    ("/timeline", "top_k"),
    ("/timeline", "hop_s"),
    ("/spectrogram", "extra"),
    ("/classify", "extra"),
]:
    for name, val in [("5000 digits", big), ("nested", nested)]:
        r = c.post(B + route, files={"audio": ("a.wav", wav, "audio/wav")}, data={field: val})
        rows.append((route, field, name, r.status_code, r.text[:90]))
for label, fn in [
    ("300 ASCII", "a" * 300 + ".wav"),
    ("90 CJK", "漢" * 90 + ".wav"),
    ("196 ASCII", "a" * 196 + ".wav"),
]:
    r = c.post(B + "/timeline", files={"audio": (fn, wav, "audio/wav")})
    rows.append(("/timeline", "filename", label, r.status_code, r.text[:90]))
for label, kw in [
    ("urlencoded 5000 digits", dict(data={"x": big})),
    ("urlencoded nested", dict(data={"x": nested})),
    ("json {}", dict(json={})),
    ("empty", {}),
]:
    r = c.post(B + "/info", **kw)
    rows.append(("/info", "body", label, r.status_code, r.text[:60]))
r = c.post(B + "/classify", files={"audio": ("a.wav", wav, "audio/wav")}, data={"top_k": "3"})
rows.append(("/classify", "top_k", "3 (good)", r.status_code, r.text[:60]))
r = c.post(B + "/timeline", files={"audio": ("a.wav", wav, "audio/wav")}, data={"top_k": "2", "hop_s": "0.5"})
rows.append(("/timeline", "top_k+hop_s", "good", r.status_code, r.text[:60]))
for row in rows:
    print(" | ".join(map(str, row)))
