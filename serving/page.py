"""The web page: drop, pick or record a sound; hear it, see what the model sees and what it says.

    bentoml serve service:SoundClassifier        # open http://localhost:3000/ (redirects to /ui/)

`app` (FastHTML) is mounted by service.py at /ui and `front_door` (Starlette) at /. BentoML 1.4
adds its own index page (Swagger UI) after the mounted apps, so front_door's GET / wins and sends a
person to the page, while BentoML's API and system routes come first and win every other clash.
The Swagger UI that / used to show stays reachable at /docs (BentoML's own file, served as is).

The browser does the work through the service's own routes on the same origin (POST /classify,
/spectrogram, /timeline; the WebSocket /listen for the Listen button), so the page's uploads and
streams pass the same guard, limits, batcher and metrics as any other client; static/page.js
renders their JSON with textContent, never innerHTML. Live audio is converted to 16-bit PCM by an
AudioWorklet module, static/listen-worklet.js (a file, because the CSP refuses blob: scripts).
The model panel is rendered here from the pipeline's `describe()` (what POST /info returns; the
service puts its pipeline in `app.state.pipeline`) and loaded by htmx; FastHTML escapes every
string in it. Nothing here decodes audio, computes features or post-processes
predictions.

No CDN: htmx 2.0.11 (npm package htmx.org, 0BSD licence in static/htmx.LICENSE) and the
stylesheet are served from static/. Every URL in the page is relative, so it also works behind a
proxy that serves the service under a path prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fasthtml.common import (
    H1,
    H2,
    A,
    Audio,
    Button,
    Code,
    Dd,
    Details,
    Div,
    Dl,
    Dt,
    FastHTML,
    Footer,
    Header,
    HttpHeader,
    Img,
    Input,
    Label,
    Link,
    Main,
    Meta,
    Ol,
    P,
    Progress,
    Script,
    Section,
    Small,
    Span,
    Strong,
    Summary,
    Table,
    Tbody,
    Td,
    Th,
    Thead,
    Title,
    Tr,
)
from starlette.applications import Starlette
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ACCEPT = "audio/*,.wav,.flac,.ogg,.oga,.mp3"
# Same origin only: no CDN, no inline script or style; recordings and spectrograms are blob: URLs.
CSP = (
    "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)

log = logging.getLogger("sound_classifier")

app = FastHTML(
    title="Sound classifier",
    default_hdrs=False,  # FastHTML's defaults load htmx and friends from a CDN
    hdrs=[
        Meta(charset="utf-8"),
        Meta(name="viewport", content="width=device-width, initial-scale=1"),
        # htmx would otherwise inject an inline <style>, which the CSP refuses.
        Meta(name="htmx-config", content='{"includeIndicatorStyles": false}'),
        Link(rel="icon", href="static/icon.svg", type="image/svg+xml"),
        Link(rel="stylesheet", href="static/page.css"),
        Script(src="static/htmx.min.js", defer=True),
        Script(src="static/page.js", defer=True),
    ],
    htmlkw={"lang": "en"},
    canonical=False,
    sess_cls=None,  # no sessions: nothing to sign
    secret_key="unused",  # without one FastHTML writes a .sesskey file into the working directory
)
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@app.get("/")
def page():
    return (
        Title("Sound classifier"),
        HttpHeader("Content-Security-Policy", CSP),
        Main(
            Header(
                H1("Sound classifier"),
                P("Drop a recording, pick a file or use the microphone: the model says what it hears."),
            ),
            input_section(),
            Section(
                H2("What it hears"),
                P(Span(id="top-label"), " ", Span(id="top-probability"), id="verdict"),
                Ol(id="bars", cls="bars", aria_label="most probable labels"),
                P(id="answer", cls="meta"),
                id="result",
                cls="card",
                hidden=True,
            ),
            Section(
                H2("Listening"),
                P(
                    Span(id="live-label"),
                    " ",
                    Span(id="live-probability"),
                    " ",
                    Span(id="live-time", cls="meta"),
                    id="live-verdict",
                    aria_live="polite",
                ),
                Div(
                    id="live-lane",
                    cls="lane",
                    role="img",
                    aria_label="label of each recent window, newest right",
                ),
                P(id="live-note", cls="meta"),
                Ol(id="live-events", cls="events", aria_label="sounds heard, newest first"),
                id="live",
                cls="card",
                hidden=True,
            ),
            Section(
                H2("Over time"),
                P(id="timeline-note", cls="meta"),
                Div(id="timeline-strip", cls="strip", role="img", aria_label="labels over time"),
                Ol(id="timeline-spans", cls="spans"),
                id="timeline",
                cls="card",
                hidden=True,
            ),
            Section(
                H2("What the model sees"),
                Img(id="spectrogram-img", alt="log-mel spectrogram of the clip, as the network receives it"),
                P(
                    "Log-mel spectrogram of the window the model judged, standardised per clip: "
                    "time across, pitch up, louder is brighter.",
                    cls="meta",
                ),
                id="spectrogram",
                cls="card",
                hidden=True,
            ),
            Section(
                H2("Model"),
                P("Loading…", cls="meta"),
                id="model",
                cls="card",
                hx_get="model",
                hx_trigger="load",
                aria_live="polite",
            ),
            Footer(
                Small(
                    "The same service answers ",
                    Code("POST /classify"),
                    ", ",
                    Code("/timeline"),
                    " and ",
                    Code("/spectrogram"),
                    " for scripts; see ",
                    A("the API docs", href="../docs"),
                    ".",
                )
            ),
            cls="page",
        ),
    )


def input_section():
    return Section(
        Label(
            Strong("Drop an audio file here"),
            Span("or click to choose one"),
            Small("WAV, FLAC, OGG or MP3"),
            Input(type="file", id="file", name="audio", accept=ACCEPT),
            id="drop",
            cls="drop",
            fr="file",
        ),
        Div(
            Button("Record", id="record", type="button", cls="record", aria_pressed="false"),
            Span(id="record-state", cls="meta", role="status"),
            cls="row",
        ),
        Div(
            Button("Listen", id="listen", type="button", cls="listen", aria_pressed="false"),
            Span(id="listen-state", cls="meta", role="status"),
            cls="row",
        ),
        Div(
            P(Span("File: ", cls="meta"), Span(id="file-name", cls="file-name")),
            Audio(id="player", controls=True, preload="metadata"),
            id="current",
            hidden=True,
        ),
        Div(
            Progress(id="progress-bar", max="100", value="0"),
            Span(id="progress-text", cls="meta", role="status"),
            id="progress",
            cls="row",
            hidden=True,
        ),
        Div(id="error", cls="error", role="alert", hidden=True),
        id="input",
        cls="card",
        aria_label="audio input",
    )


@app.get("/model")
def model_panel():
    """Which model answers, from the pipeline's `describe()` (the data POST /info returns)."""
    try:
        info = app.state.pipeline.describe()
    except Exception:  # no pipeline attached yet, or the model's metadata is incomplete
        log.exception("the page could not read the model information")
        return H2("Model"), P("Model information is unavailable right now.", cls="meta")
    fs, metrics = info.feature_settings, info.metrics
    recall = metrics.get("per_class_recall") or {}
    facts = [
        ("Tag", Code(info.model, id="model-tag")),
        ("Engine", f"{info.engine} ({info.precision})"),
        ("Window", f"{fs['clip_seconds']:g} s at {fs['sample_rate']} Hz, {fs['n_mels']} mel bands"),
    ]
    if info.dataset:
        facts.append(("Trained on", info.dataset))
    if "accuracy" in metrics:
        held_out = f" on {metrics['n_valid']} held-out clips" if "n_valid" in metrics else " (held out)"
        # What the figure is (a grouped held-out or cross-validation estimate), as training stored it.
        how = Small(f" ({metrics['estimate']})", id="accuracy-estimate") if metrics.get("estimate") else ""
        facts.append(("Accuracy", Span(f"{metrics['accuracy']:.1%}{held_out}", how)))
    if "macro_f1" in metrics:
        facts.append(("Macro-F1", f"{metrics['macro_f1']:.3f}"))
    rows = [Tr(Td(label), Td(f"{recall[label]:.0%}" if label in recall else "–")) for label in info.labels]
    return (
        H2("Model"),
        Div(
            Dl(*[part for name, value in facts for part in (Dt(name), Dd(value))]),
            Details(
                Summary(f"{len(info.labels)} labels"),
                Table(Thead(Tr(Th("label"), Th("held-out recall"))), Tbody(*rows), cls="labels"),
            ),
            id="model-card",
            # For page.js: when to ask for a timeline, the size limit to quote on a cut-off upload, the
            # rate to listen at (the model's: the server then has nothing to resample) and the rule of
            # "unknown" (the page sends no min_confidence of its own).
            data_clip_seconds=f"{fs['clip_seconds']:g}",
            data_sample_rate=str(fs["sample_rate"]),
            data_max_upload_mb=f"{info.limits.get('max_upload_mb', 0):g}",
            data_min_confidence=f"{info.min_confidence:g}",
            data_unknown_score=info.unknown_rule.score,
        ),
    )


def to_page(request):
    # Relative, so it also works behind a proxy that adds a path prefix.
    return RedirectResponse("ui/", status_code=307)


def api_docs(request):
    # BentoML's index page (bentoml is pinned exactly); its links are relative to / and still work.
    import _bentoml_impl.server

    return FileResponse(Path(_bentoml_impl.server.__file__).parent / "main-openapi.html")


front_door = Starlette(routes=[Route("/", to_page), Route("/docs", api_docs)])
