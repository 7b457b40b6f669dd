"""Turn one run's measurements into headline figures and ratios, Markdown, a plot and JSON.

The report states what was measured and how it compares (the service against the raw engine, its
peers, itself under another setting); whether a figure is good enough is for the issues and the
README to say, not for this code.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure


@dataclass(frozen=True)
class Ratio:
    """A ratio of the interleaved rounds: the median over rounds of numerator / denominator (each
    round's pair measured minutes apart at most, so the machine's drift cancels)."""

    title: str
    numerator: str  # a name measured in the interleaved rounds
    denominator: str
    metric: str  # "rps" (req/s at the stage's clients) or "p50_ms" (at one client)


RATIOS = (
    Ratio("served throughput / the same service forced to bf16", "service", "service-bf16", "rps"),
    Ratio("served throughput / LitServe as users deploy it, on eager PyTorch fp32", "service", "litserve-eager", "rps"),
    Ratio("served throughput / LitServe on the service's own engine", "service", "litserve-engine", "rps"),
    Ratio("p50 at 1 client / LitServe eager's p50 at 1 client", "service, 1 client", "litserve-eager, 1 client",
          "p50_ms"),
    Ratio("served throughput / the in-process pipeline on the same cores", "service", "in-process", "rps"),
)  # fmt: skip
PEERS = {"no-batching": ("the same service without batching", "no-batching server skipped"),
         "torch": ("the same service on PyTorch", "torch server skipped"),
         "litserve": ("the LitServe peer", "LitServe peer skipped or not installed")}


def not_as_asked(server: dict) -> str | None:
    """Why a server's figures are not reported: it was skipped or failed, or it served another engine
    than the one it asked for (SOUND_ENGINE=torch without PyTorch weights falls back to the automatic one)."""
    if why := server.get("skipped") or server.get("failed"):
        return why
    asked, engine = server.get("env", {}).get("SOUND_ENGINE"), server.get("engine", "?")
    return f"asked for SOUND_ENGINE={asked}, served {engine}" if asked and not engine.startswith(f"{asked}/") else None


def point(results: dict, config: str, transport: str, clients: int) -> dict | None:
    for p in results.get("served", {}).get(config, {}).get(transport, []):
        if p["clients"] == clients:
            return p
    return None


def _figure(name: str, measured: str, ratio: float | None = None) -> dict:
    return {"figure": name, "measured": measured, "ratio": ratio}


def _missing(name: str, why: str) -> dict:
    return _figure(name, f"not measured: {why}")


def _mib(x: float) -> str:
    return f"{x:.0f} MiB"


def figures(results: dict) -> list[dict]:
    """The run's headline figures, each with the ratio it is read as where there is one."""
    engine = results.get("served", {}).get("batching", {}).get("engine")
    return [
        throughput_figure(results), latency_figure(results, engine), soak_figure(results.get("soak")),
        *interleaved_figures(results.get("interleaved", {})), *[peer_figure(results, peer, engine) for peer in PEERS],
        *lean_figures(results.get("lean")),
        bento_figure(results.get("bento")), image_figure(results.get("image")), *listen_figures(results.get("listen")),
    ]  # fmt: skip


def throughput_figure(results: dict) -> dict:
    name = "HTTP throughput at 32 clients / raw in-process best"
    best, http32 = results.get("raw_best"), point(results, "batching", "http", 32)
    if not (best and http32):
        return _missing(name, "raw or served stage skipped")
    ratio = http32["rps"] / best["clips_per_s"]
    return _figure(name, f"{http32['rps']:.1f} req/s vs {best['clips_per_s']:.1f} clips/s ({best['engine']}, "
                         f"batch {best['batch']})", ratio)


def latency_figure(results: dict, engine: str | None) -> dict:
    name = "HTTP p50 at 1 client, against the raw single-clip latency"
    http1 = point(results, "batching", "http", 1)
    raw1 = results.get("raw", {}).get(engine, {}).get("batches", {}).get(1) if engine else None
    if not (http1 and raw1):
        return _missing(name, "raw or served stage skipped")
    p50, raw = http1["latency_ms"]["p50"], raw1["latency_ms_p50"]
    idle, cold = raw1.get("latency_ms_p50_after_idle"), raw1.get("latency_ms_p50_cold")
    context = (f"; {idle:.1f} ms after 1 ms idle" if idle else "") + (f", {cold:.1f} with caches evicted" if cold else "")
    grpc1 = point(results, "batching", "grpc", 1)  # same worker and core, without BentoML's HTTP stack
    via_grpc = f" (gRPC {grpc1['latency_ms']['p50']:.1f} ms)" if grpc1 else ""
    return _figure(name, f"{p50:.1f} ms{via_grpc} vs raw {raw:.1f} ms ({engine}, batch 1{context}): "
                         f"{p50 - raw:+.1f} ms", p50 / raw if raw else None)


def soak_figure(soak: dict | None) -> dict:
    name = "errors at 64 clients, good and bad files (soak)"
    if not soak:
        return _missing(name, "soak skipped")
    failures = f": {soak['failures'][:2]}" if soak["errors"] else ""
    return _figure(name, f"{soak['errors']} errors in {soak['requests']} requests over {soak['seconds']:.0f} s "
                         f"({soak['good_ok']} good ok, {soak['bad_refused_correctly']} bad refused right; "
                         f"/readyz after: {soak['readyz_after']}){failures}")


def peer_figure(results: dict, peer: str, engine: str | None) -> dict:
    label, why_missing = PEERS[peer]
    name = f"served throughput / {label} at 32 clients (HTTP, sequential stages)"
    ours, theirs = point(results, "batching", "http", 32), point(results, peer, "http", 32)
    if why := not_as_asked(results.get("served", {}).get(peer, {})):
        return _missing(name, why)
    if not (ours and theirs and theirs["rps"] > 0):
        return _missing(name, why_missing)
    return _figure(name, f"{ours['rps']:.1f} ({engine}) vs {theirs['rps']:.1f} req/s", ours["rps"] / theirs["rps"])


def summarize_interleaved(rounds: list[dict[str, dict]]) -> dict:
    """Medians over the interleaved rounds (each round: name -> {"rps", "p50_ms", "cpu_ms", ...}; a
    figure a name lacks is left out) and, for every RATIOS pair measured in every round, the median
    of the rounds' own ratios."""
    names = [n for n in rounds[0] if all(n in row for row in rounds)] if rounds else []

    def medians(key: str) -> dict[str, float]:
        values = {n: [row[n][key] for row in rounds if row[n].get(key) is not None] for n in names}
        return {n: statistics.median(v) for n, v in values.items() if v}

    summary: dict = {"median_rps": medians("rps"), "median_p50_ms": medians("p50_ms"),
                     "median_cpu_ms": medians("cpu_ms"), "ratios": {}}
    for r in RATIOS:
        if r.numerator in names and r.denominator in names:
            per_round = [row[r.numerator][r.metric] / row[r.denominator][r.metric] if row[r.denominator][r.metric]
                         else math.inf for row in rounds]  # fmt: skip
            summary["ratios"][f"{r.numerator} / {r.denominator}"] = {"median": statistics.median(per_round),
                                                                      "per_round": per_round}
    return summary


def interleaved_figures(both: dict) -> list[dict]:
    """One row per RATIOS entry: the median of the rounds' own ratios, with the medians beside it."""
    return [_interleaved_figure(r, both) for r in RATIOS]


def _interleaved_figure(r: Ratio, both: dict) -> dict:
    name = f"{r.title} (HTTP, interleaved)"
    servers = both.get("servers", {})
    ratio = both.get("ratios", {}).get(f"{r.numerator} / {r.denominator}")
    names = [n.removesuffix(", 1 client") for n in (r.numerator, r.denominator)]
    unlike = "; ".join(f"{n}: {why}" for n in names if (why := not_as_asked(servers.get(n, {}))))
    if ratio is None or unlike:
        return _missing(name, unlike or both.get("failed") or "interleaved stage skipped")
    medians = both["median_rps" if r.metric == "rps" else "median_p50_ms"]
    unit = "req/s" if r.metric == "rps" else "ms p50"
    a, b = (f"{n} {medians[n]:.1f} {unit} on {servers.get(n.removesuffix(', 1 client'), {}).get('engine', '?')}"
            for n in (r.numerator, r.denominator))
    note = ""
    if r.numerator == "service" and r.denominator == "service-bf16" and \
            servers.get("service", {}).get("engine") == servers.get("service-bf16", {}).get("engine"):
        note = "; both served the same engine: the model has no accepted INT8 graph (see the raw table)"
    per_round = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
    return _figure(name, f"median of {len(ratio['per_round'])} rounds ({a} vs {b}; per round {per_round}){note}",
                   ratio["median"])


def lean_figures(lean: dict | None) -> list[dict]:
    """Memory, start-up and no-PyTorch figures of the `lean` stage (one server, defaults)."""
    names = ["RSS of the served tree after warm-up and after a 32-client load",
             "RSS 30 s after a hostile burst beside a 32-client load / RSS warm",
             "peak RSS during start-up (launch to every worker answering)",
             "cold start: `bentoml serve` to every worker answering",
             "processes of the served tree that map libtorch"]
    if not lean or "start" not in lean:
        why = (lean or {}).get("failed", "lean stage skipped")
        return [_missing(n, why) for n in names]
    start, warm, loaded = lean["start"], lean.get("memory_warm"), lean.get("memory_after_load")
    return [_rss_figure(names[0], lean, warm, loaded), _hostile_figure(names[1], lean, warm),
            _startup_figure(names[2], start), _cold_start_figure(names[3], start),
            _libtorch_figure(names[4], lean.get("libtorch"))]


def _rss_figure(name: str, lean: dict, warm: dict | None, loaded: dict | None) -> dict:
    if not (warm and loaded):
        return _missing(name, lean.get("failed", "not reached"))
    root, *children = loaded["processes"]  # tree_memory lists the `bentoml serve` process first
    parts = f"`bentoml serve` {_mib(root['rss_mb'])}, its children " + ", ".join(_mib(p["rss_mb"]) for p in children)
    return _figure(name, f"warm {_mib(warm['rss_mb'])}, after {lean['load']['seconds']:.0f} s at "
                         f"{lean['load']['clients']} clients {_mib(loaded['rss_mb'])} ({lean['start']['workers']} "
                         f"workers; PSS {_mib(loaded['pss_mb'])}; {parts})")


def _hostile_figure(name: str, lean: dict, warm: dict | None) -> dict:
    after = lean.get("memory_after_hostile")
    if not (warm and after):
        return _missing(name, lean.get("failed", "not reached"))
    burst, good = lean["hostile"], lean.get("hostile_load") or {}
    beside = f" beside {good['clients']} clients ({good['ok']} of {good['requests']} answered 200)" if good else ""
    return _figure(name, f"{_mib(after['rss_mb'])} vs {_mib(warm['rss_mb'])} warm, peak {_mib(lean.get('hostile_peak_mb'))}"
                         f", after {burst['seconds']:.0f} s of {burst['clients']} hostile clients{beside} "
                         f"({burst['requests']} hostile requests, {burst['wrong']} wrong answers, /readyz "
                         f"{burst['readyz_after']})", after["rss_mb"] / warm["rss_mb"])


def _startup_figure(name: str, start: dict) -> dict:
    peak = start["startup_rss"]
    return _figure(name, f"{_mib(peak['peak_mb'])} at {peak['peak_at_s']:.1f} s ({peak['samples']} samples, every "
                         f"{peak['interval_s'] * 1000:.0f} ms)")


def _cold_start_figure(name: str, start: dict) -> dict:
    every = start["every_worker_s"]
    if every is None:
        return _figure(name, f"only {len(start['worker_first_answer_s'])} of {start['workers']} workers answered")
    return _figure(name, f"{every:.1f} s for {start['workers']} workers (first /readyz {start['readyz_s']:.1f} s, "
                         f"first /classify answer {start.get('first_answer_s', float('nan')):.1f} s; engine speed "
                         f"{start['speed_cache']})")


def _libtorch_figure(name: str, torch_maps: dict | None) -> dict:
    if torch_maps is None:
        return _missing(name, "not checked")
    mapped = torch_maps["mapped"]
    return _figure(name, f"{len(mapped)} of {torch_maps['processes']} processes" + (f": {mapped}" if mapped else ""))


def bento_figure(bento: dict | None) -> dict:
    name = "a built Bento imported into an empty BentoML home: import + `bentoml serve` to the first answer"
    if not bento or "first_answer_s" not in bento:
        return _missing(name, (bento or {}).get("failed") or (bento or {}).get("skipped") or "bento stage skipped")
    every = bento.get("every_worker_s")
    return _figure(name, f"{bento['import_to_first_answer_s']:.1f} s: import {bento['import_s']:.1f} s, then first "
                         f"answer {bento['first_answer_s']:.1f} s after launch (every worker "
                         f"{'-' if every is None else f'{every:.1f}'} s; engine speed {bento['speed_cache']}; build "
                         f"{bento['build_s']:.0f} s, {_mib(bento['bento_mb'])})")


def image_figure(image: dict | None) -> dict:
    name = "the image `make image` built: container start to the first /classify answer, median of the starts"
    if not image or "median_s" not in image:
        return _missing(name, (image or {}).get("failed") or (image or {}).get("skipped") or "image stage skipped")
    return _figure(name, f"{image['median_s']:.1f} s ({', '.join(f'{s:.1f}' for s in image['first_classify_s'])}); "
                         f"{image['image_mb']:.0f} MB; served tree {_mib(image['rss_mb_after_first'])} after the answer")


def listen_figures(listen: dict | None) -> list[dict]:
    """Live listening figures of the `listen` stage (one server, defaults)."""
    names = ["live /listen: lag from a hop's last sample to its message, 16 real-speed streams",
             "64 live streams: RSS after / before, streams dropped, other routes answered"]
    if not listen or "soak" not in listen:
        why = (listen or {}).get("failed", "listen stage skipped")
        return [_missing(n, why) for n in names]
    lat = listen["latency"]
    if "p95_ms" in lat:
        lag = _figure(names[0], f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, max {lat['max_ms']:.0f} ms "
                                f"over {lat['windows']} windows of {lat['streams']} streams x {lat['seconds']:g} s "
                                f"({lat['dropped']} dropped)")
    else:
        lag = _missing(names[0], f"no window measured: {lat['failures'][:2]}")
    soak, before, after = listen["soak"], listen["memory_before"], listen["memory_after"]
    other = listen["other_requests"]
    memory = _figure(
        names[1], f"{_mib(before['rss_mb'])} -> {_mib(after['rss_mb'])} (before: after a "
                  f"{listen.get('warmup', {}).get('seconds', 0):g}-s warm-up at {soak['streams']} streams; "
                  f"{_mib(listen.get('memory_after_latency', before)['rss_mb'])} after the latency run); "
                  f"{soak['dropped']} of {soak['streams']} streams dropped over {soak['seconds']:g} s; /classify "
                  f"beside them {other['ok']}/{other['sent']} answered", after["rss_mb"] / before["rss_mb"])
    return [lag, memory]


# --- Markdown ------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    """The report: the run's context, its headline figures, then one section per stage that ran."""
    sections = (_header, _figures_section, _raw_section, _interleaved_section, _lean_section, _bento_section, _image_section,
                _sharing_section, _spark_section, _features_section, _served_section, _soak_section, _footer)
    return "\n".join(line for section in sections for line in section(results))


def _header(results: dict) -> list[str]:
    meta = results["meta"]
    lines = [
        f"# Benchmark: {meta['model']} ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"{meta['started']}, commit {meta['commit']}, {meta['cpu']} ({meta['cores']} cores, bf16 {meta['bf16']}), "
        f"load average at start {meta['loadavg_start']:.2f}, at end {meta.get('loadavg_end', float('nan')):.2f}. "
        f"HTTP load client: {meta['http_client']}. Clip: {meta['clip']}.",
    ]
    if meta["loadavg_start"] > 0.25 * meta["cores"]:
        lines += ["", f"**The machine was not quiet** (load {meta['loadavg_start']:.2f} on {meta['cores']} cores): "
                      "figures are low and noisy."]
    return lines


def _figures_section(results: dict) -> list[str]:
    lines = ["", "## Figures", "", "| figure | measured | ratio |", "|---|---|---|"]
    for row in results.get("figures", []):
        lines.append(f"| {row['figure']} | {row['measured']} | {_f(row['ratio'], 2)} |")
    return lines


def _raw_section(results: dict) -> list[str]:
    raw = results.get("raw")
    if not raw:
        return []
    sizes = sorted({int(b) for r in raw.values() for b in r.get("batches", {})})
    ref = next((r["agreement"].get("reference", "torch/fp32") for r in raw.values() if "agreement" in r), "?")
    lines = ["", "## Raw model in process (clips/s; latency of one call, ms)", "",
             f"| engine | agrees now with {ref} (max prob diff) | stored report | " + " | ".join(f"b={b}" for b in sizes) + " |",
             "|---|---|---|" + "---|" * len(sizes)]
    for label, r in raw.items():
        if "skipped" in r:
            lines.append(f"| {label} | {r['skipped']} | |" + " |" * len(sizes))
            continue
        a = r["agreement"]
        cells = [f"{_f(r['batches'][b]['clips_per_s'])} / {_f(r['batches'][b]['latency_ms_p50'])} ms" for b in sizes]
        lines.append(f"| {label} | {a['ok']} ({a['max_prob_diff']:.4f}) | {r.get('stored_report', '')} | "
                     + " | ".join(cells) + " |")
    best = results["raw_best"]
    return [*lines, f"\nBest: {best['engine']} at batch {best['batch']}: {best['clips_per_s']:.1f} clips/s."]


def _interleaved_section(results: dict) -> list[str]:
    both = results.get("interleaved", {})
    if not both.get("rounds"):
        return ["", "## Interleaved", "", f"failed: {both['failed']}"] if both.get("failed") else []
    names = list(both["rounds"][0])
    one_client = {n: n.endswith(", 1 client") for n in names}
    servers = "; ".join(f"{n} = {s.get('engine') or 'skipped: ' + s.get('skipped', '?')}"
                        + (f" ({' '.join(f'{k}={v}' for k, v in s['env'].items())})" if s.get("env") else "")
                        for n, s in both.get("servers", {}).items())
    lines = ["", f"## Interleaved at {both['clients']} clients (servers up together, each loaded in turn while the "
                 f"others are paused, {both['seconds']:g} s each; the ', 1 client' columns are p50 latency at one "
                 "client)", "", f"Servers: {servers}.", "",
             "| round | " + " | ".join(f"{n}: {'p50 ms' if one_client[n] else 'req/s'}" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(both["rounds"], 1):
        cells = [_f(row[n]["p50_ms" if one_client[n] else "rps"])
                 + (f" ({row[n]['errors']} errors)" if row[n].get("errors") else "") for n in names]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    medians = [_f(both["median_p50_ms"].get(n) if one_client[n] else both["median_rps"][n])
               for n in names if n in both.get("median_rps", {})]
    return [*lines, "| median | " + " | ".join(medians) + " |", *_cpu_table(both, [n for n in names if not one_client[n]])]


def _cpu_table(both: dict, names: list[str]) -> list[str]:
    cpu, servers, served = both.get("median_cpu_ms", {}), both["servers"], both["ratios"].get("service / in-process")
    rows = [f"| {n} | {servers.get(n, {}).get('engine', '?')} | {_f(cpu[n], 2)} | {_f(both['median_rps'][n])} |"
            for n in names if n in cpu]
    return rows and [
        "", f"### CPU per request ({both['clients']} clients)", "", "Medians of the rounds: a server's tree CPU over "
        "its turn / requests answered 200; in-process: the bench process's CPU time (time.process_time) per clip for "
        f"decode + features + engine + answer, batches of {servers.get('in-process', {}).get('batch', '?')}, no server; "
        "its req/s = cores x 1000 / CPU ms.", "", "| | engine | CPU ms/req | req/s |", "|---|---|---|---|", *rows,
        *([f"\nserved / in-process throughput: {served['median']:.2f} (median of the rounds' own ratios)."] if served else [])]


def _lean_section(results: dict) -> list[str]:
    lean = results.get("lean")
    if not lean or "start" not in lean:
        return ["", "## Start-up and memory", "", f"failed: {lean['failed']}"] if lean and lean.get("failed") else []
    start = lean["start"]
    workers = ", ".join(f"pid {pid} {t:.1f} s" for pid, t in start["worker_first_answer_s"].items())
    lines = ["", f"## Start-up and memory ({lean.get('engine', '?')}, {start['workers']} workers, defaults)", "",
             f"`bentoml serve` to the first /readyz {_f(start['readyz_s'])} s, to every worker answering "
             f"{_f(start['every_worker_s'])} s (each worker's first answer: {workers}), first /classify answer "
             f"{_f(start.get('first_answer_s'))} s; start-up RSS peak {_f(start['startup_rss']['peak_mb'], 0)} MiB; "
             f"the engine's speed was {start['speed_cache']}.", "",
             "| when | tree RSS MiB | tree PSS MiB | per process RSS MiB |", "|---|---|---|---|"]
    for key, when in (("memory_warm", "after warm-up"), ("memory_after_load", "after the 32-client load"),
                      ("memory_after_hostile", "30 s after the hostile burst beside the load")):
        if m := lean.get(key):
            per = ", ".join(f"{p['rss_mb']:.0f} (`{p['command']}`)" for p in m["processes"])
            lines.append(f"| {when} | {m['rss_mb']:.0f} | {m['pss_mb']:.0f} | {per} |")
    if burst := lean.get("hostile"):
        lines += ["", f"Hostile burst: {burst['clients']} clients for {burst['seconds']:.0f} s, answers "
                      f"{burst['statuses']}, {burst['wrong']} wrong; cases sent: {burst['per_case']}."]
        lines += [f"- {f}" for f in burst["failures"][:5]]
    return lines


def _bento_section(results: dict) -> list[str]:
    bento = results.get("bento")
    if not bento:
        return []
    if "first_answer_s" not in bento:
        return ["", "## Bento", "", f"{bento.get('failed') or bento.get('skipped')}"]
    return ["", "## A built Bento, imported into an empty BentoML home (and an empty HOME)", "",
            f"`bentoml build` {bento['build_s']:.1f} s, `bentoml export` {bento['export_s']:.1f} s "
            f"({bento['bento_mb']:.0f} MiB), `bentoml import` {bento['import_s']:.1f} s; `bentoml serve "
            f"{bento['bento']}` to the first /readyz {bento['readyz_s']:.1f} s, to every worker "
            f"{_f(bento['every_worker_s'])} s, to the first /classify answer {bento['first_answer_s']:.1f} s "
            f"(engine speed {bento['speed_cache']}); start-up RSS peak {bento['startup_rss']['peak_mb']:.0f} MiB."]


def _image_section(results: dict) -> list[str]:
    image = results.get("image")
    if not image:
        return []
    if "median_s" not in image:
        return ["", "## The image", "", f"{image.get('failed') or image.get('skipped')}"]
    lines = ["", f"## The image ({image['image']}, {image['image_mb']:.0f} MB, run with {image['runtime']})", "",
             f"Container start to the first /classify answer: {', '.join(f'{s:.2f}' for s in image['first_classify_s'])} s "
             f"(median {image['median_s']:.2f}); served tree {image['rss_mb_after_first']:.0f} MiB after it.", "",
             "| clients | req/s | p50 ms | p99 ms | mean batch | errors |", "|---|---|---|---|---|---|"]
    for clients, point in image.get("throughput", {}).items():
        lines.append(f"| {clients} | {point['rps']:.1f} | {point['latency_ms']['p50']:.1f} | "
                     f"{point['latency_ms']['p99']:.1f} | {_f(point['mean_batch'])} | {point['errors']} |")
    return lines


def _sharing_section(results: dict) -> list[str]:
    share = results.get("sharing")
    if not share or "wide" not in share:
        return []
    lines = ["", f"## Sharing the cores ({share['engine']}, batches of {share['batch']}, "
                 f"{share['threads']} threads wide or {share['stream_count']} single-threaded streams)", "",
             "| engine runs | alone: engine clips/s | beside a feature thread: engine clips/s | features clips/s |",
             "|---|---|---|---|"]
    for mode in ("wide", "streams"):
        alone, beside = share[mode], share[f"{mode}_beside_features"]
        lines.append(f"| {mode} | {_f(alone['engine_clips_per_s'])} | {_f(beside['engine_clips_per_s'])} | "
                     f"{_f(beside['features_clips_per_s'])} |")
    return lines


def _spark_section(results: dict) -> list[str]:
    spark = results.get("spark")
    if not spark:
        return []
    if "files_per_s" not in spark:
        return ["", "## Batch on Spark", "", f"failed: {spark.get('failed', '')}"]
    ratio = spark.get("ratio_to_raw_best")
    return ["", "## Batch on Spark", "",
            f"`python -m batch.classify` on {spark['master']}: {spark['files']} files in {spark['seconds']:.1f} s "
            f"= {spark['files_per_s']:.1f} files/s end to end (JVM start-up included)"
            + (f", {ratio:.2f} x the raw in-process best." if ratio else ".")]


def _features_section(results: dict) -> list[str]:
    feats = results.get("features")
    if not feats:
        return []
    lines = ["", f"## Features per clip ({feats['clip']['seconds']:g} s, {feats['clip']['sample_rate']} Hz mono; "
                 "Classifier.prepare, one thread)", "",
             "| format | bytes | decode ms | resample + log-mel ms | total ms (p90) | total ms, caches evicted |",
             "|---|---|---|---|---|---|"]
    for fmt, r in feats.items():
        if fmt != "clip":
            lines.append(f"| {fmt} | {r['bytes']} | {_f(r['decode_ms'])} | {_f(r['features_ms'])} | "
                         f"{_f(r['prepare_ms'])} ({_f(r['prepare_ms_p90'])}) | {_f(r.get('prepare_ms_cold'))} |")
    return lines


def _served_section(results: dict) -> list[str]:
    served = results.get("served", {})
    if not served:
        return []
    lines = ["", "## Served (closed loop: each client sends its next request when answered)", "",
             "| server | transport | clients | req/s | p50 ms | p95 ms | p99 ms | mean batch | errors | "
             "server CPU ms/req | client CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for config, s in served.items():
        if "skipped" in s:
            lines.append(f"| {config} | {s['skipped']} |" + " |" * 9)
            continue
        label = f"{config} ({s.get('engine', '?')}, max batch {s.get('max_batch_size', '?')})"
        lines += [_served_row(label, transport, p, results["meta"]["cores"])
                  for transport in ("http", "grpc") for p in s.get(transport, [])]
    return lines


def _served_row(label: str, transport: str, p: dict, cores: int) -> str:
    lat = p["latency_ms"]
    cpu = _f(1000 * p["server_cpu_s"] / p["ok"], 1) if p.get("server_cpu_s") and p["ok"] else "-"
    client = _f(100 * p["client_cpu_s"] / p["seconds"] / cores, 0)
    errors = p["errors"] if not p["errors"] else f"{p['errors']} {p['statuses']}"
    return (f"| {label} | {transport} ({p['client']}) | {p['clients']} | {_f(p['rps'])} | {_f(lat['p50'])} | "
            f"{_f(lat['p95'])} | {_f(lat['p99'])} | {_f(p['mean_batch'], 2)} | {errors} | {cpu} | {client} |")


def _soak_section(results: dict) -> list[str]:
    soak = results.get("soak")
    if not soak:
        return []
    rss = soak.get("server_rss_mb") or {}
    lines = ["", "## Soak", "",
             f"{soak['clients']} clients for {soak['seconds']:.0f} s, {soak['requests']} requests: "
             f"{soak['good_ok']} good files answered 200, {soak['good_failed']} good files failed, "
             f"{soak['bad_refused_correctly']} bad files refused with the right status and kind, "
             f"{soak['bad_wrong']} wrong, {soak['transport_errors']} transport errors; good-file latency "
             f"p50 {_f(soak['good_latency_ms']['p50'])} ms, p99 {_f(soak['good_latency_ms']['p99'])} ms; "
             f"/readyz after: {soak['readyz_after']}; server RSS {_f(rss.get('before'), 0)} -> "
             f"{_f(rss.get('after'), 0)} MB."]
    return lines + [f"- {f}" for f in soak["failures"][:5]]


def _footer(results: dict) -> list[str]:
    meta = results["meta"]
    return ["", f"Run time {meta.get('elapsed_s', 0):.0f} s. Command: `{meta['command']}`.", ""]


# --- plot ----------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(15, 4.5), dpi=100)
    ax_raw, ax_tput, ax_lat = fig.subplots(1, 3)
    for label, r in results.get("raw", {}).items():
        if "batches" in r:
            sizes = sorted(int(b) for b in r["batches"])
            ax_raw.plot(sizes, [r["batches"][b]["clips_per_s"] for b in sizes], marker="o", label=label)
    ax_raw.set(xscale="log", xlabel="batch size", ylabel="clips/s", title="raw model, in process")
    ax_raw.set_xticks([1, 2, 4, 8, 16, 32], labels=["1", "2", "4", "8", "16", "32"])
    for config, s in results.get("served", {}).items():
        for transport in ("http", "grpc"):
            points = s.get(transport, [])
            if points:
                clients = [p["clients"] for p in points]
                name = f"{config} {transport}"
                ax_tput.plot(clients, [p["rps"] for p in points], marker="o", label=name)
                ax_lat.plot(clients, [p["latency_ms"]["p50"] for p in points], marker="o", label=f"{name} p50")
                ax_lat.plot(clients, [p["latency_ms"]["p99"] for p in points], linestyle=":",
                            color=ax_lat.lines[-1].get_color())
    if results.get("raw_best"):
        ax_tput.axhline(results["raw_best"]["clips_per_s"], color="grey", linestyle="--", label="raw best")
    ax_tput.set(xscale="log", xlabel="concurrent clients", ylabel="answers/s", title="served throughput")
    ax_lat.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms",
               title="served latency (p50 solid, p99 dotted)")
    for ax in (ax_tput, ax_lat):
        ax.set_xticks([1, 8, 32, 64], labels=["1", "8", "32", "64"])
    for ax in (ax_raw, ax_tput, ax_lat):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['meta']['model']} on {results['meta']['cpu']} ({results['meta']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path)


def write(results: dict, out: Path, stem: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str))
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths
