// The page's behaviour: pick, drop or record audio, send it to the service's own routes on this
// origin (POST ../classify, ../spectrogram, ../timeline) and render their answers; or stream the
// microphone to WebSocket ../listen and render its windows and events. Text goes into the page with
// textContent only; nothing here decodes audio for the model or post-processes predictions.
// Recordings are converted to 16-bit WAV because the service does not read WebM.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_K = 5;
const uploads = new Map(); // request -> {loaded, total}, for one progress bar over all uploads
let current = 0; // id of the latest file: answers about an older one are dropped
let recorder = null;

// --- small helpers ------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) {
  return p > 0 && p < 0.001 ? "<0.1%" : `${(100 * p).toFixed(1)}%`;
}

// A threshold as people say it: 63%, 62.5% (not 63.0%).
function percentShort(p) {
  return `${Number((100 * p).toFixed(1))}%`;
}

// The probability beside a label. When the model's rule says "unknown", the top probability is its
// best guess's, not "unknown"'s: "unknown 62.3%" read as "62% sure it is unknown", so the best guess
// is named, and why it was not taken: the clip is unlike the sounds the model was trained on (the
// rule of models trained since familiarity existed), or the guess missed the probability threshold
// (older models). The page sends no min_confidence: the rule is the model's, which the panel carries.
function verdictDetail(label, best) {
  if (!best) return "";
  if (label !== "unknown") return percent(best.probability);
  const card = $("model-card");
  if (card && card.dataset.unknownScore === "familiarity")
    return `(best guess ${best.label} ${percent(best.probability)}, unlike the sounds the model was trained on)`;
  const threshold = modelSetting("minConfidence");
  return `(best guess ${best.label} ${percent(best.probability)}, below the ` +
    (threshold === null ? "model's threshold)" : `${percentShort(threshold)} threshold)`);
}

function seconds(s) {
  return `${s.toFixed(1)} s`;
}

function hue(label) { // a stable colour per label
  let h = 0;
  for (const c of label) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function modelSetting(name) { // from the model panel that htmx loaded (null until it has)
  const card = $("model-card");
  const value = card ? Number(card.dataset[name]) : NaN;
  return Number.isFinite(value) && value > 0 ? value : null;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

// --- talking to the service ---------------------------------------------------------------------

function updateProgress() {
  let loaded = 0, total = 0;
  for (const u of uploads.values()) { loaded += u.loaded; total += u.total; }
  const done = total > 0 && loaded >= total;
  $("progress").hidden = uploads.size === 0;
  $("progress-bar").value = total ? Math.round((100 * loaded) / total) : 0;
  $("progress-text").textContent = done ? "Listening…" : `Uploading ${$("progress-bar").value}%`;
}

// POST the file as multipart field "audio"; resolves to {status, body: Blob} (status 0: no answer).
function post(route, file, fields = {}) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("audio", file, file.name);
    for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
    const xhr = new XMLHttpRequest();
    uploads.set(xhr, { loaded: 0, total: file.size });
    updateProgress();
    const finish = () => { uploads.delete(xhr); updateProgress(); resolve({ status: xhr.status, body: xhr.response }); };
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) uploads.set(xhr, { loaded: e.loaded, total: e.total });
      updateProgress();
    };
    xhr.onload = finish;
    xhr.onerror = finish;
    xhr.open("POST", `../${route}`);
    xhr.responseType = "blob";
    xhr.send(form);
  });
}

async function json(answer) {
  try { return JSON.parse(await answer.body.text()); } catch { return null; }
}

// A sentence for a refused request: the service's own explanation, never a raw body.
async function problem(answer) {
  if (answer.status === 0) {
    const limit = modelSetting("maxUploadMb");
    return "The upload did not get an answer: the connection was closed" +
      (limit ? ` (files up to ${limit} MB are accepted).` : ".");
  }
  const body = await json(answer);
  if (body && typeof body.detail === "string" && body.detail) return body.detail;
  if (answer.status === 503) return "The server is busy right now: try again in a moment.";
  return `The server could not handle this file (HTTP ${answer.status}).`;
}

// --- rendering ----------------------------------------------------------------------------------

function renderResult(result) {
  const [best] = result.top;
  // The service's answer: the top label, or "unknown" by the model's rule.
  $("top-label").textContent = result.label ?? best.label;
  $("top-probability").textContent = verdictDetail(result.label ?? best.label, best);
  const bars = $("bars");
  bars.replaceChildren();
  for (const { label, probability } of result.top) {
    const item = el("li", "bar");
    const track = el("span", "bar-track");
    const fill = el("span", "bar-fill");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    item.append(el("span", "bar-label", label), track, el("span", "bar-value", percent(probability)));
    bars.append(item);
  }
  const clip = modelSetting("clipSeconds");
  $("answer").textContent =
    `${seconds(result.duration_s)} at ${result.sample_rate} Hz · answered by ${result.model}` +
    (clip && result.duration_s > clip ? ` · judged on its loudest ${clip} s window` : "");
  $("result").hidden = false;
}

function renderTimeline(timeline) {
  const strip = $("timeline-strip");
  const spans = $("timeline-spans");
  strip.replaceChildren();
  spans.replaceChildren();
  const total = timeline.duration_s || 1;
  timeline.summary.forEach((span, i) => {
    const range = `${seconds(span.start_s)} – ${seconds(span.end_s)}`;
    // Windows overlap, so spans do too: on the strip each span runs until the next one starts.
    const next = timeline.summary[i + 1];
    const until = Math.min(next ? next.start_s : span.end_s, total);
    const block = el("button", "segment", span.label);
    block.type = "button";
    block.title = `${span.label}, ${range}`;
    block.style.left = `${(100 * span.start_s) / total}%`;
    block.style.width = `${(100 * (until - span.start_s)) / total}%`;
    block.style.setProperty("--hue", hue(span.label));
    const item = el("li");
    const jump = el("button", "span", "");
    jump.type = "button";
    jump.append(el("span", "span-time", range), el("span", "span-label", span.label));
    jump.style.setProperty("--hue", hue(span.label));
    for (const b of [block, jump]) b.addEventListener("click", () => playFrom(span.start_s));
    item.append(jump);
    strip.append(block);
    spans.append(item);
  });
  $("timeline-note").textContent =
    `${timeline.windows.length} windows of ${timeline.window_s} s, one every ${timeline.hop_s} s; ` +
    "click a span to hear it.";
  $("timeline").hidden = false;
}

function playFrom(start) {
  const player = $("player");
  player.currentTime = start;
  player.play().catch(() => {}); // autoplay may be refused; the position is still set
}

function renderSpectrogram(png) {
  const img = $("spectrogram-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(png);
  $("spectrogram").hidden = false;
}

// --- one file, from the picker, a drop or the microphone ----------------------------------------

async function analyse(file) {
  const id = ++current;
  for (const section of ["result", "timeline", "spectrogram", "error"]) $(section).hidden = true;
  $("file-name").textContent = file.name;
  const player = $("player");
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  $("current").hidden = false;

  const [answer, picture] = await Promise.all([post("classify", file, { top_k: TOP_K }), post("spectrogram", file)]);
  if (id !== current) return;
  if (answer.status !== 200) {
    showError(`“${file.name}” could not be classified. ${await problem(answer)}`);
    return;
  }
  const result = await json(answer);
  if (!result || !Array.isArray(result.top) || result.top.length === 0) {
    showError("The server's answer could not be read.");
    return;
  }
  renderResult(result);
  if (picture.status === 200) renderSpectrogram(picture.body);

  const clip = modelSetting("clipSeconds");
  if (clip === null || result.duration_s > clip) {
    const answered = await post("timeline", file, { top_k: 3 });
    if (id !== current) return;
    const timeline = answered.status === 200 ? await json(answered) : null;
    if (timeline && timeline.windows.length > 1) renderTimeline(timeline);
    else if (answered.status !== 200) showError(`No timeline for this recording. ${await problem(answered)}`);
  }
}

function pick(files) {
  if (files && files.length) analyse(files[0]);
}

// --- recording: MediaRecorder, then the browser's decoder turns it into 16-bit PCM WAV ----------

function wav(buffer) {
  const channels = buffer.numberOfChannels, frames = buffer.length, bytes = frames * channels * 2;
  const view = new DataView(new ArrayBuffer(44 + bytes));
  const ascii = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  ascii(0, "RIFF"); view.setUint32(4, 36 + bytes, true); ascii(8, "WAVE"); ascii(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, channels, true);
  view.setUint32(24, buffer.sampleRate, true); view.setUint32(28, buffer.sampleRate * channels * 2, true);
  view.setUint16(32, channels * 2, true); view.setUint16(34, 16, true); ascii(36, "data"); view.setUint32(40, bytes, true);
  const data = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
  for (let i = 0, at = 44; i < frames; i++) {
    for (let c = 0; c < channels; c++, at += 2) {
      const s = Math.max(-1, Math.min(1, data[c][i]));
      view.setInt16(at, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  }
  return new Blob([view], { type: "audio/wav" });
}

async function startRecording() {
  const button = $("record"), state = $("record-state");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    state.textContent = e && e.name === "NotAllowedError"
      ? "Microphone access was refused." : "No microphone could be opened.";
    return;
  }
  const chunks = [];
  const started = Date.now();
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  const tick = setInterval(() => { state.textContent = `Recording ${Math.floor((Date.now() - started) / 1000)} s`; }, 250);
  recorder.onstop = async () => {
    clearInterval(tick);
    stream.getTracks().forEach((t) => t.stop());
    button.textContent = "Record";
    button.setAttribute("aria-pressed", "false");
    state.textContent = "Converting…";
    const context = new AudioContext();
    try {
      const audio = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
      const stamp = new Date().toTimeString().slice(0, 8).replaceAll(":", "");
      state.textContent = "";
      analyse(new File([wav(audio)], `recording-${stamp}.wav`, { type: "audio/wav" }));
    } catch {
      state.textContent = "The recording could not be converted.";
    } finally {
      context.close();
    }
  };
  recorder.start();
  button.textContent = "Stop";
  button.setAttribute("aria-pressed", "true");
  state.textContent = "Recording 0 s";
}

// A microphone button (#id, its status in #id-state), or why it cannot work here: browsers hide
// the microphone's APIs from pages that are not HTTPS or localhost.
function setUpMicrophoneButton(id, supported, doing, onClick) {
  const button = $(id);
  if (!(navigator.mediaDevices && supported)) {
    button.disabled = true;
    $(`${id}-state`).textContent = window.isSecureContext
      ? `This browser cannot ${doing}.` : "The microphone needs HTTPS (or localhost).";
    return;
  }
  button.addEventListener("click", onClick);
}

function setUpRecording() {
  setUpMicrophoneButton("record", window.MediaRecorder && window.AudioContext, "record audio", () => {
    if (recorder && recorder.state === "recording") recorder.stop();
    else startRecording();
  });
}

// --- listening: the microphone streamed to WebSocket ../listen, windows and events as they come --

// The AudioContext runs at the model's own sample rate, and that rate goes to the server as
// sample_rate: the browser resamples the microphone itself (Chromium and Safari connect a 44.1 or
// 48 kHz microphone to a context of any rate through their own band-limited resampler), the server
// gets the samples its features use and resamples nothing, and a 16-22 kHz stream is a third to
// half the bytes of a 48 kHz one. A resampler in the worklet would be code to get right
// (anti-aliasing) for no browser that needs it: one that refuses to connect a microphone to a
// context of another rate (NotSupportedError) gets a context at its own rate instead, which the
// server resamples (it takes 8-48 kHz and says so if not).
const LISTEN = { hop_s: 0.5, top_k: 3, smoothing: 3 }; // smoothing: an event needs 2 of 3 windows
const FRAME_S = 0.1; // audio per WebSocket message
const LANE_WINDOWS = 60; // the lane shows the last 30 s of windows; older ones leave the DOM
const EVENT_ITEMS = 20; // the events list keeps this many, newest first
const MAX_BEHIND_S = 5; // audio waiting in the socket's send queue before the page gives up
const STOP_WAIT_MS = 5000; // after "end", how long the server has to answer the rest and close
let live = null; // the running session: {socket, stream, context, node, open, error, stopping, ...}

function closeReason(session, e) { // a sentence for a socket that closed, or null if all went well
  // 1005 (no code): the page closed it itself, when the server did not within STOP_WAIT_MS.
  if (!session.error && (e.code === 1000 || (session.stopping && e.code === 1005))) return null;
  const said = session.error || e.reason;
  if (said) return `${said}${e.code === 1013 ? " Try again in a moment." : ""}`;
  return session.opened ? "the connection to the server was lost." : "the server could not be reached.";
}

function renderWindow(w) {
  const [best] = w.top;
  $("live-label").textContent = w.label;
  $("live-probability").textContent = verdictDetail(w.label, best);
  $("live-time").textContent = `${seconds(w.start_s)} – ${seconds(w.end_s)}`;
  // The lane: one segment per run of windows with the same label, widths in windows.
  const lane = $("live-lane");
  let last = lane.lastElementChild;
  if (!last || last.dataset.label !== w.label) {
    last = el("span", w.label === "unknown" ? "lane-run unknown" : "lane-run", w.label);
    last.dataset.label = w.label;
    last.dataset.windows = "0";
    last.title = `${w.label} from ${seconds(w.start_s)}`;
    last.style.setProperty("--hue", hue(w.label));
    lane.append(last);
  }
  last.dataset.windows = Number(last.dataset.windows) + 1;
  let shown = 0;
  for (const run of lane.children) shown += Number(run.dataset.windows);
  if (shown > LANE_WINDOWS) {
    const first = lane.firstElementChild;
    first.dataset.windows = Number(first.dataset.windows) - 1;
    if (first.dataset.windows === "0") first.remove();
  }
  for (const run of lane.children) run.style.width = `${(100 * run.dataset.windows) / LANE_WINDOWS}%`;
}

function renderEvent(session, event) {
  const list = $("live-events");
  let item = event.event === "end" ? session.open.get(event.label) : null;
  if (!item) {
    item = el("li", "event");
    item.append(el("span", "event-label", event.label), el("span", "event-time", ""));
    item.style.setProperty("--hue", hue(event.label));
    list.prepend(item);
    while (list.childElementCount > EVENT_ITEMS) list.lastElementChild.remove();
  }
  const time = item.querySelector(".event-time");
  if (event.event === "start") {
    session.open.set(event.label, item);
    item.classList.add("open");
    time.textContent = `from ${seconds(event.start_s)}`;
  } else {
    session.open.delete(event.label);
    item.classList.remove("open");
    time.textContent = `${seconds(event.start_s)} – ${seconds(event.end_s)}`;
  }
}

function onLiveMessage(session, data) {
  let message;
  try { message = JSON.parse(data); } catch { return; }
  if (!message || typeof message !== "object") return;
  if (typeof message.error === "string") session.error = typeof message.detail === "string" ? message.detail : message.error;
  else if (message.event === "start" || message.event === "end") renderEvent(session, message);
  else if (Array.isArray(message.top)) renderWindow(message);
}

function release(session) { // the microphone and the audio graph; safe to call twice
  if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  if (session.node) { session.node.port.onmessage = null; session.node.disconnect(); }
  if (session.context && session.context.state !== "closed") session.context.close().catch(() => {});
}

function listenButton(listening, busy) {
  const button = $("listen");
  button.textContent = listening ? "Stop" : "Listen";
  button.setAttribute("aria-pressed", String(listening));
  button.disabled = busy;
}

function finishListening(session, e) {
  clearTimeout(session.timer);
  release(session);
  if (live === session) live = null;
  listenButton(false, false);
  const problem = closeReason(session, e);
  const heard = session.samples / session.rate;
  $("listen-state").textContent = problem ? "Stopped." : `Stopped after ${seconds(heard)}.`;
  if (problem) showError(`Listening stopped: ${problem}`);
}

function stopListening(session) {
  session.stopping = true;
  release(session); // no more audio
  if (session.socket.readyState === WebSocket.OPEN) {
    session.socket.send("end"); // the server answers the rest (last window, open events), then closes
    session.timer = setTimeout(() => session.socket.close(), STOP_WAIT_MS);
    listenButton(true, true);
    $("listen-state").textContent = "Finishing…";
  } else {
    session.socket.close();
  }
}

async function startListening() {
  const state = $("listen-state");
  const session = { open: new Map(), error: null, stopping: false, opened: false, samples: 0 };
  live = session;
  listenButton(false, true);
  $("error").hidden = true;
  state.textContent = "Opening the microphone…";
  try {
    // Raw sound: echo cancellation, noise suppression and gain control are made for voices.
    session.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    live = null;
    listenButton(false, false);
    state.textContent = e && e.name === "NotAllowedError"
      ? "Microphone access was refused." : "No microphone could be opened.";
    return;
  }
  let source;
  try {
    const rate = modelSetting("sampleRate") ?? 16000; // 16 kHz until the model panel has loaded
    session.context = new AudioContext({ sampleRate: rate });
    try {
      source = session.context.createMediaStreamSource(session.stream);
    } catch {
      session.context.close();
      session.context = new AudioContext();
      source = session.context.createMediaStreamSource(session.stream);
    }
    await session.context.audioWorklet.addModule("static/listen-worklet.js");
    session.node = new AudioWorkletNode(session.context, "pcm-frames", {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { frameSeconds: FRAME_S },
    });
  } catch {
    release(session);
    live = null;
    listenButton(false, false);
    state.textContent = "This browser could not process the microphone's sound.";
    return;
  }
  if (live !== session) { release(session); return; }
  session.rate = session.context.sampleRate;

  const url = new URL("../listen", document.baseURI); // relative: works under a path prefix too
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ sample_rate: session.rate, ...LISTEN }).toString();
  const socket = session.socket = new WebSocket(url);
  session.node.port.onmessage = (e) => {
    if (socket.readyState !== WebSocket.OPEN || session.stopping) return;
    if (socket.bufferedAmount > MAX_BEHIND_S * 2 * session.rate) { // the browser's queue stays bounded
      session.error = `the connection cannot keep up with live sound (over ${MAX_BEHIND_S} s not yet sent).`;
      session.stopping = true;
      release(session);
      socket.close();
      return;
    }
    socket.send(e.data);
    session.samples += e.data.byteLength / 2;
  };
  socket.onopen = () => {
    session.opened = true;
    source.connect(session.node); // the stream's 0 s is the first sample sent
    session.context.resume().catch(() => {});
    for (const id of ["live-lane", "live-events"]) $(id).replaceChildren();
    for (const id of ["live-label", "live-probability", "live-time"]) $(id).textContent = "";
    const clip = modelSetting("clipSeconds");
    $("live-note").textContent = (clip ? `A ${clip} s window` : "A window") +
      ` every ${LISTEN.hop_s} s; a sound is listed once ${LISTEN.smoothing - 1} of` +
      ` ${LISTEN.smoothing} windows agree.`;
    $("live").hidden = false;
    listenButton(true, false);
    state.textContent = `Listening at ${session.rate} Hz…`;
  };
  socket.onmessage = (e) => { if (typeof e.data === "string") onLiveMessage(session, e.data); };
  socket.onclose = (e) => finishListening(session, e);
}

function setUpListening() {
  setUpMicrophoneButton("listen", window.AudioWorkletNode && window.WebSocket, "stream audio", () => {
    if (live && live.socket) stopListening(live);
    else if (!live) startListening();
  });
}

// --- wiring -------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const input = $("file"), drop = $("drop");
  input.addEventListener("change", () => { pick(input.files); input.value = ""; });
  // A file dropped anywhere on the page is taken (and the browser does not navigate to it).
  document.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files);
  });
  setUpRecording();
  setUpListening();
});
