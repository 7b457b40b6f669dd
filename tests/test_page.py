"""The web page in a real headless Chromium against a real `bentoml serve` (session fixture `served`).

    PYTHONPATH=. .venv/bin/python -m pytest tests/test_page.py

Needs /usr/bin/chromium (Debian package `chromium`; `playwright install` cannot download here).
Every answer the page shows is compared with what the service's HTTP routes return for the same
file; every request the page makes must stay on the server's origin. The microphone is Chromium's
fake capture device: a beep, or for Listen a looped file of a known sound. A screenshot of the page
is left in tests/artifacts/page.png.
"""

from __future__ import annotations

import csv
import io
import json
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a microphone that beeps
]  # fmt: skip
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 30_000
# A file name that would become markup if the page ever put it into innerHTML.
HOSTILE_NAME = '<img src=x onerror="document.title=1">street.wav'
# 4 synthetic events of 5 s, stereo float WAV: 3.5 MB, four model windows, under the 5 MB limit.
LONG_LABELS = ("siren", "dog_bark", "rain", "church_bell")
UPLOAD_BYTES_PER_S = 3_000_000  # slow enough to watch the progress bar move, fast enough to finish


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.base_url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def playwright():
    assert Path(CHROMIUM).exists(), "install Chromium: apt-get install -y --no-install-recommends chromium"
    with sync_playwright() as p:  # one per thread: every browser of this module shares it
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()


@contextmanager
def tracked_page(browser, served) -> Iterator[Page]:
    """A fresh page that records every URL it requests or opens a WebSocket to; on leaving, checks
    they all stayed on the server's origin."""
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("websocket", lambda ws: page.requests.append(ws.url))
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
    origin = served.base_url + "/"
    home = (origin, "blob:" + origin, origin.replace("http://", "ws://", 1))
    assert page.requests, "the page made no requests at all"
    strays = [u for u in page.requests if not u.startswith(home)]
    assert not strays, f"requests left {origin}: {strays}"


@pytest.fixture
def page(browser, served):
    with tracked_page(browser, served) as page:
        yield page


def long_recording() -> bytes:
    from training.synthetic import SAMPLE_RATE, make_clip

    x = np.concatenate(
        [make_clip(label, np.random.default_rng([7, i])) for i, label in enumerate(LONG_LABELS)]
    )
    x = 0.8 * x / np.abs(x).max()
    buf = io.BytesIO()
    sf.write(buf, np.stack([x, x], axis=1), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def post(http: httpx.Client, route: str, data: bytes, name: str) -> httpx.Response:
    return http.post(route, files={"audio": (name, data, "application/octet-stream")})


def open_page(page: Page, served) -> None:
    page.goto(served.base_url + "/")
    assert page.url == served.base_url + "/ui/"
    expect(page.locator("#model-tag")).to_have_text(served.model_tag)  # the panel htmx loads


def choose(page: Page, name: str, data: bytes, mime: str = "audio/wav") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_root_leads_to_the_page_and_the_api_docs_stay(http):
    r = http.get("/")
    assert r.status_code == 307 and r.headers["location"] == "ui/", (r.status_code, r.headers)
    page = http.get("/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/ui/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, csp
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    vendored = Path(__file__).parent.parent / "serving" / "static" / "htmx.min.js"
    assert http.get("/ui/static/htmx.min.js").content == vendored.read_bytes()
    docs = http.get("/docs")  # BentoML's Swagger UI, which / showed before the page took it over
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert http.get("/docs.json").json()["paths"].keys() >= {"/classify", "/timeline", "/spectrogram"}
    assert http.post("/info").status_code == 200  # the API still wins over the mounted apps


def test_upload_shows_label_bars_spectrogram_and_timeline(page, served, http):
    data = long_recording()
    expected = post(http, "/classify", data, "street.wav").json()
    timeline = post(http, "/timeline", data, "street.wav").json()
    png = post(http, "/spectrogram", data, "street.wav").content
    png_width, png_height = struct.unpack(">II", png[16:24])
    assert len(timeline["windows"]) > 1 and len(data) > 3_000_000

    open_page(page, served)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": UPLOAD_BYTES_PER_S,
    })  # fmt: skip
    choose(page, HOSTILE_NAME, data)
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^Uploading [1-9]\d?%$"))
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
    })  # fmt: skip

    # The answer: the same top label and probabilities as POST /classify, one bar each.
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#top-label")).to_have_text(expected["label"])  # the answer's label ("unknown" too)
    bars = page.locator("#bars li")
    expect(bars).to_have_count(len(expected["top"]))
    expect(page.locator("#bars .bar-label")).to_have_text([s["label"] for s in expected["top"]])
    values = page.locator("#bars .bar-value").all_text_contents()
    for shown, score in zip(values, expected["top"], strict=True):
        p = 100 * score["probability"]
        assert shown == ("<0.1%" if 0 < p < 0.1 else f"{p:.1f}%"), (shown, score)
    widths = page.eval_on_selector_all("#bars .bar-fill", "es => es.map(e => parseFloat(e.style.width))")
    assert widths == pytest.approx([100 * s["probability"] for s in expected["top"]], abs=0.051)
    expect(page.locator("#answer")).to_contain_text(expected["model"])

    # The file name is text, not markup.
    expect(page.locator("#file-name")).to_have_text(HOSTILE_NAME)
    assert page.locator("#current img").count() == 0 and page.title() == "Sound classifier"

    # The spectrogram is the service's PNG for this file, decoded by the browser.
    expect(page.locator("#spectrogram")).to_be_visible()
    size = page.eval_on_selector(
        "#spectrogram-img", "e => e.decode().then(() => [e.naturalWidth, e.naturalHeight])"
    )
    assert size == [png_width, png_height] and png_width > 0

    # The timeline: one span per merged span of POST /timeline, in order.
    expect(page.locator("#timeline")).to_be_visible()
    expect(page.locator("#timeline-spans .span-label")).to_have_text(
        [s["label"] for s in timeline["summary"]]
    )
    expect(page.locator("#timeline-strip .segment")).to_have_count(len(timeline["summary"]))
    expect(page.locator("#progress")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "page.png", full_page=True)

    # Phone width: nothing sticks out sideways.
    page.set_viewport_size({"width": 360, "height": 800})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 360 px screen"


def test_unknown_names_the_best_guess_and_why_it_was_not_taken(page, served, http, unknown_sound):
    name, data, answer = unknown_sound  # the service answers "unknown" to it
    assert http.post("/info").json()["unknown_rule"]["score"] == "familiarity"
    best = answer["top"][0]
    open_page(page, served)
    choose(page, name, data)
    expect(page.locator("#top-label")).to_have_text("unknown")
    # not "unknown 62.3%", which reads as 62% sure it is unknown: the guess, and why it was not taken
    expect(page.locator("#top-probability")).to_have_text(
        f"(best guess {best['label']} {100 * best['probability']:.1f}%, unlike the sounds the model was trained on)"
    )
    expect(page.locator("#bars .bar-label").first).to_have_text(best["label"])
    # the model panel says what its accuracy figure is: grouped, held out, as training stored it
    expect(page.locator("#accuracy-estimate")).to_have_text(re.compile(r"^ \(grouped held-out estimate: fold 1, "))


def test_non_audio_file_gets_a_readable_message(page, served, http):
    data, name = b"shopping list: milk, eggs\n" * 20, "<b>notes</b>.txt"
    refused = post(http, "/classify", data, name)
    assert refused.status_code == 415, refused.text

    open_page(page, served)
    choose(page, name, data, mime="text/plain")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(name)
    expect(error).to_contain_text(refused.json()["detail"])
    text = error.text_content()
    assert "{" not in text and "Traceback" not in text and '"error"' not in text, text
    assert error.locator("b").count() == 0
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#spectrogram")).to_be_hidden()


def test_microphone_recording_is_sent_as_wav_and_classified(page, served, http):
    labels = http.post("/info").json()["labels"]
    open_page(page, served)
    record = page.locator("#record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#record-state")).to_have_text(re.compile(r"^Recording [1-9]\d* s$"))  # >= 1 s
    record.click()
    expect(page.locator("#file-name")).to_have_text(re.compile(r"^recording-\d{6}\.wav$"))
    expect(page.locator("#result")).to_be_visible()
    assert page.locator("#top-label").text_content() in labels
    answer = page.locator("#answer").text_content()
    duration = float(re.match(r"^(\d+\.\d) s at \d+ Hz", answer).group(1))
    assert 0.8 <= duration <= 10, answer  # the service read it: WebM would have been refused with 415
    expect(page.locator("#error")).to_be_hidden()


# --- Listen: the microphone streamed to WebSocket /listen ---------------------------------------


@pytest.fixture(scope="module")
def known_sound(synthetic_dir, http, tmp_path_factory) -> tuple[str, Path]:
    """(label, 16-bit WAV) of a 5 s synthetic clip that the served model labels right at every hop
    of its own loop (Chromium loops the capture file and the page starts listening at any point of
    it), as /timeline answers three loops of it with the page's hop and the model's rule."""
    with (synthetic_dir / "meta" / "esc50.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        samples, rate = sf.read(synthetic_dir / "audio" / row["filename"], dtype="int16")
        loops = io.BytesIO()
        sf.write(loops, np.tile(samples, 3), rate, format="WAV", subtype="PCM_16")
        timeline = post(http, "/timeline", loops.getvalue(), "loops.wav").json()
        if {w["label"] for w in timeline["windows"]} == {row["category"]}:
            path = tmp_path_factory.mktemp("microphone") / "known.wav"
            sf.write(path, samples, rate, subtype="PCM_16")  # Chromium reads 16-bit PCM only
            return row["category"], path
    pytest.fail("the tiny model labels no synthetic clip right at every hop of its loop")


@pytest.fixture
def listening_page(playwright, served, known_sound):
    """A page in a Chromium of its own whose microphone plays `known_sound` (launch flags are per
    browser: the module's browser keeps its beep)."""
    b = playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={known_sound[1]}"]
    )
    try:
        with tracked_page(b, served) as page:
            yield page
    finally:
        b.close()


def watch_sockets(page: Page) -> list[dict]:
    """Every WebSocket the page opens: {"socket", "sent": [bytes | str], "received": [dict]}."""
    sockets: list[dict] = []

    def opened(ws) -> None:
        record = {"socket": ws, "sent": [], "received": []}
        ws.on("framesent", lambda payload: record["sent"].append(payload))
        ws.on("framereceived", lambda payload: record["received"].append(json.loads(payload)))
        sockets.append(record)

    page.on("websocket", opened)
    return sockets


def test_listen_streams_the_microphone_and_shows_labels_and_events(listening_page, served, http, known_sound):
    page, (label, _) = listening_page, known_sound
    rate = http.post("/info").json()["feature_settings"]["sample_rate"]
    sockets = watch_sockets(page)
    open_page(page, served)
    listen, state = page.locator("#listen"), page.locator("#listen-state")

    for run in range(2):  # stop, then start again
        listen.click()
        expect(listen).to_have_attribute("aria-pressed", "true")
        expect(state).to_have_text(f"Listening at {rate} Hz…")
        # The first window needs a full window of audio (5 s), and the first event a hop more.
        expect(page.locator("#live-label")).to_have_text(label, timeout=TIMEOUT_MS)
        expect(page.locator("#live-probability")).to_have_text(re.compile(r"^\d+\.\d%$"))
        expect(page.locator("#live-events .event.open .event-label")).to_have_text([label])
        expect(page.locator("#live-events .event-time")).to_have_text([re.compile(r"^from \d+\.\d s$")])
        expect(page.locator("#live-lane .lane-run").last).to_have_text(label)
        listen.click()
        expect(state).to_have_text(re.compile(r"^Stopped after \d+\.\d s\.$"))
        expect(listen).to_have_text("Listen")
        expect(listen).to_have_attribute("aria-pressed", "false")
        expect(listen).to_be_enabled()

        # The socket: the model's rate asked for, 0.1 s frames of 16-bit PCM, "end", then closed by
        # the server after its last answers (the end of the open event among them).
        assert len(sockets) == run + 1
        ws = sockets[run]
        assert ws["socket"].url.startswith(served.base_url.replace("http://", "ws://") + "/listen?")
        assert f"sample_rate={rate}&" in ws["socket"].url
        assert ws["socket"].is_closed()
        *frames, end = ws["sent"]
        assert end == "end" and len(frames) >= 50, (end, len(frames))
        assert {len(f) for f in frames} == {2 * round(0.1 * rate)}
        windows = [m for m in ws["received"] if "top" in m]
        events = [m for m in ws["received"] if "event" in m]
        assert [w["start_s"] for w in windows] == [0.5 * k for k in range(len(windows))]
        assert [w["label"] for w in windows[:-1]] == [label] * (len(windows) - 1)  # the last is shorter
        assert events[0] == {"event": "start", "label": label, "start_s": 0.0}
        assert events[-1]["event"] == "end" and events[-1]["label"] == label
        expect(page.locator("#live-events .event")).to_have_count(1)
        expect(page.locator("#live-events .event-time")).to_have_text(f"0.0 s – {events[-1]['end_s']:.1f} s")
        expect(page.locator("#live-events .event.open")).to_have_count(0)
    assert page.evaluate("live") is None  # no session left behind
    expect(page.locator("#error")).to_be_hidden()


def test_listen_shows_why_the_server_closed_the_stream(page, served):
    open_page(page, served)
    # A rate the server refuses (it takes 8-48 kHz): the page listens at the model panel's rate.
    page.eval_on_selector("#model-card", "card => { card.dataset.sampleRate = '96000'; }")
    page.locator("#listen").click()
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Listening stopped: sample_rate")
    expect(error).to_contain_text("48000")
    expect(page.locator("#listen-state")).to_have_text("Stopped.")
    expect(page.locator("#listen")).to_have_text("Listen")
    expect(page.locator("#listen")).to_be_enabled()


def test_listen_lane_and_events_stay_bounded_and_labels_stay_text(page, served):
    """Half an hour of windows (3600 at 0.5 s), fed to the page's own message handler as /listen
    sends them: the DOM keeps the last 60 windows and 20 events, and a label is never markup."""
    open_page(page, served)
    shown = page.evaluate(
        """hostile => {
        const session = { open: new Map() };
        const send = (m) => onLiveMessage(session, JSON.stringify(m));
        for (let k = 0; k < 3600; k++) {
          const label = k % 10 < 6 ? hostile : "rain";
          send({ start_s: k / 2, end_s: k / 2 + 5, label, top: [{ label, probability: 0.9 }] });
          if (k % 10 === 0) send({ event: "start", label: hostile, start_s: k / 2 });
          if (k % 10 === 6) send({ event: "end", label: hostile, start_s: (k - 6) / 2, end_s: k / 2 });
        }
        const runs = [...document.querySelectorAll("#live-lane .lane-run")];
        return {
          windows: runs.map((r) => Number(r.dataset.windows)),
          widths: runs.map((r) => parseFloat(r.style.width)),
          events: document.querySelectorAll("#live-events .event").length,
          newest: document.querySelector("#live-events .event-time").textContent,
        };
    }""",
        HOSTILE_NAME,
    )
    assert sum(shown["windows"]) == 60 and len(shown["windows"]) == 12, shown["windows"]
    assert sum(shown["widths"]) == pytest.approx(100)
    assert shown["events"] == 20 and shown["newest"] == "1795.0 s – 1798.0 s", shown
    expect(page.locator("#live-label")).to_have_text("rain")
    expect(page.locator("#live-events .event-label").first).to_have_text(HOSTILE_NAME)
    assert page.locator("#live img").count() == 0 and page.title() == "Sound classifier"
