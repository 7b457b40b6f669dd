"""Turn one run's measurements into targets (met / missed, by how much), Markdown, a plot and JSON."""

from __future__ import annotations

import json
import math
import operator
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

# The targets of issues 6, 9 and 21, as ratios against what this run measured.
THROUGHPUT_SHARE = 0.85  # (6) HTTP req/s at 32 clients >= this x the best raw in-process clips/s
LATENCY_ALLOWANCE_MS = 10.0  # (6) HTTP p50 at 1 client <= raw single-clip latency + this
ENGINE_SPEEDUP = 2.0  # (9) engine-served req/s at 32 clients >= this x PyTorch-served
MiB_PER_GiB = 1024
MAX_RSS_MB = 1.0 * MiB_PER_GiB  # (21) the served tree after warm-up and after a 32-client load
MAX_STARTUP_RSS_MB = 1.5 * MiB_PER_GiB  # (21) its peak from launch until every worker answers
MAX_HOSTILE_GROWTH = 1.25  # (21) after a hostile burst, x the RSS after the load
MAX_COLD_START_S = 15.0  # (21) `bentoml serve` to every worker answering
MAX_LISTEN_P95_MS = 100.0  # (20) last sample of a hop to its message, 16 real-speed streams
MAX_LISTEN_GROWTH = 1.1  # (20) RSS after 64 streams for 60 s, x before


@dataclass(frozen=True)
class Ratio:
    """A target on the interleaved rounds: the median over rounds of numerator / denominator (each
    round's pair measured minutes apart at most, so the machine's drift cancels), `op` goal."""

    title: str
    numerator: str  # a name measured in the interleaved rounds
    denominator: str
    metric: str  # "rps" (req/s at the stage's clients) or "p50_ms" (at one client)
    op: str  # ">=", ">" or "<="
    goal: float


RATIOS = (
    Ratio("(21) served throughput >= 1.4 x the same service forced to bf16 (HTTP, interleaved)",
          "service", "service-bf16", "rps", ">=", 1.4),
    Ratio("(21) served throughput >= 3.5 x LitServe as users deploy it: eager PyTorch fp32 and its batching "
          "(HTTP, interleaved)", "service", "litserve-eager", "rps", ">=", 3.5),
    Ratio("(9) ahead of LitServe on the service's own engine (HTTP, interleaved)",
          "service", "litserve-engine", "rps", ">", 1.0),
    Ratio("(21) p50 at 1 client <= 0.6 x LitServe eager's p50 at 1 client (HTTP, interleaved)",
          "service, 1 client", "litserve-eager, 1 client", "p50_ms", "<=", 0.6),
)  # fmt: skip
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


def point(results: dict, config: str, transport: str, clients: int) -> dict | None:
    for p in results.get("served", {}).get(config, {}).get(transport, []):
        if p["clients"] == clients:
            return p
    return None


def _target(name: str, measured: str, goal: str, ratio: float | None, met: bool | None, margin: str) -> dict:
    return {"target": name, "measured": measured, "goal": goal, "ratio": ratio, "met": met, "margin": margin}


def _missing(name: str, why: str) -> dict:
    return _target(name, "not measured", "", None, None, why)


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%"


def _ms_margin(spare: float) -> str:
    return f"{spare:+.1f} ms headroom" if spare >= 0 else f"over by {-spare:.1f} ms"


def targets(results: dict, soak_seconds: float) -> list[dict]:
    out = []
    best = results.get("raw_best")
    http32 = point(results, "batching", "http", 32)

    name = f"(6) HTTP throughput at 32 clients >= {THROUGHPUT_SHARE} x raw in-process best"
    if best and http32:
        ratio = http32["rps"] / best["clips_per_s"]
        out.append(_target(
            name, f"{http32['rps']:.1f} req/s = {ratio:.2f} x {best['clips_per_s']:.1f} clips/s ({best['engine']}, batch {best['batch']})",
            f">= {THROUGHPUT_SHARE * best['clips_per_s']:.1f} req/s", ratio, ratio >= THROUGHPUT_SHARE,
            f"{_pct(ratio / THROUGHPUT_SHARE - 1)} vs target",
        ))  # fmt: skip
    else:
        out.append(_missing(name, "raw or served stage skipped"))

    engine = results.get("served", {}).get("batching", {}).get("engine")
    out.append(_latency_target(results, engine, LATENCY_ALLOWANCE_MS, 6))

    name = "(6) batching beats no batching at 32 clients (HTTP)"
    naive = point(results, "no-batching", "http", 32)
    if http32 and naive and naive["rps"] > 0:
        ratio = http32["rps"] / naive["rps"]
        out.append(_target(name, f"{http32['rps']:.1f} vs {naive['rps']:.1f} req/s", "> 1.00 x", ratio, ratio > 1.0,
                           f"{_pct(ratio - 1)} throughput"))
    else:
        out.append(_missing(name, "no-batching server skipped"))

    name = f"(6) zero errors at 64 clients sustained for {soak_seconds:g} s (soak, good and bad files)"
    soak = results.get("soak")
    if soak:
        long_enough = soak["seconds"] >= 0.95 * soak_seconds
        out.append(_target(
            name, f"{soak['errors']} errors in {soak['requests']} requests over {soak['seconds']:.0f} s "
                  f"({soak['good_ok']} good ok, {soak['bad_refused_correctly']} bad refused right)",
            "0 errors", None, soak["errors"] == 0 and long_enough and soak["readyz_after"] == 200,
            "none" if soak["errors"] == 0 else f"{soak['errors']} errors: {soak['failures'][:2]}",
        ))  # fmt: skip
    else:
        out.append(_missing(name, "soak skipped"))

    # The peer ratios of issues 9 and 21 from the interleaved rounds, then issue 9's from the sequential stages.
    out += interleaved_targets(results.get("interleaved", {}))
    for peer, (label, why_missing) in PEERS.items():
        theirs = point(results, peer, "http", 32)
        if http32 and theirs and theirs["rps"] > 0:
            ratio = http32["rps"] / theirs["rps"]
            measured = f"{http32['rps']:.1f}{f' ({engine})' if peer == 'torch' else ''} vs {theirs['rps']:.1f} req/s ({label})"
            out.append(_peer_target(peer, 32, "sequential stages", ratio, measured))
        else:
            out.append(_missing(_peer_name(peer, 32, "sequential stages"), why_missing))
    out += lean_targets(results.get("lean"))
    out.append(bento_target(results.get("bento")))
    out += listen_targets(results.get("listen"))
    return out


def listen_targets(listen: dict | None) -> list[dict]:
    """Issue 20's rows from the `listen` stage (one server, defaults)."""
    names = [f"(20) live /listen: lag p95 <= {MAX_LISTEN_P95_MS:g} ms at 16 real-speed streams",
             f"(20) 64 live streams: RSS after <= {MAX_LISTEN_GROWTH:g} x before, none dropped, other routes answered"]
    if not listen or "soak" not in listen:
        why = (listen or {}).get("failed", "listen stage skipped")
        return [_missing(n, why) for n in names]
    out = []
    lat = listen["latency"]
    if "p95_ms" in lat:
        out.append(_target(
            names[0], f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, max {lat['max_ms']:.0f} ms over "
                      f"{lat['windows']} windows of {lat['streams']} streams x {lat['seconds']:g} s ({lat['dropped']} dropped)",
            f"<= {MAX_LISTEN_P95_MS:g} ms", lat["p95_ms"] / MAX_LISTEN_P95_MS,
            lat["p95_ms"] <= MAX_LISTEN_P95_MS and lat["dropped"] == 0, _ms_margin(MAX_LISTEN_P95_MS - lat["p95_ms"])))
    else:
        out.append(_missing(names[0], f"no window measured: {lat['failures'][:2]}"))
    soak, before, after = listen["soak"], listen["memory_before"], listen["memory_after"]
    growth = after["rss_mb"] / before["rss_mb"]
    other = listen["other_requests"]
    met = growth <= MAX_LISTEN_GROWTH and soak["dropped"] == 0 and other["sent"] > 0 and other["ok"] == other["sent"]
    out.append(_target(
        names[1], f"{_mib(before['rss_mb'])} -> {_mib(after['rss_mb'])} = {growth:.2f} x (before: after a "
                  f"{listen.get('warmup', {}).get('seconds', 0):g}-s warm-up at {soak['streams']} streams; "
                  f"{_mib(listen.get('memory_after_latency', before)['rss_mb'])} after the latency run); {soak['dropped']} of "
                  f"{soak['streams']} streams dropped over {soak['seconds']:g} s; /classify beside them "
                  f"{other['ok']}/{other['sent']} answered",
        f"<= {MAX_LISTEN_GROWTH:g} x, 0 dropped", growth / MAX_LISTEN_GROWTH, met,
        _under(growth, MAX_LISTEN_GROWTH, "x")))
    return out


def summarize_interleaved(rounds: list[dict[str, dict]]) -> dict:
    """Medians over the interleaved rounds (each round: name -> {"rps", "p50_ms", ...}) and, for
    every RATIOS pair measured in every round, the median of the rounds' own ratios."""
    names = [n for n in rounds[0] if all(n in row for row in rounds)] if rounds else []
    summary: dict = {
        "median_rps": {n: statistics.median(row[n]["rps"] for row in rounds) for n in names},
        "median_p50_ms": {n: statistics.median(row[n]["p50_ms"] for row in rounds) for n in names},
        "ratios": {},
    }
    for r in RATIOS:
        if r.numerator in names and r.denominator in names:
            per_round = [row[r.numerator][r.metric] / row[r.denominator][r.metric] if row[r.denominator][r.metric]
                         else math.inf for row in rounds]  # fmt: skip
            summary["ratios"][f"{r.numerator} / {r.denominator}"] = {"median": statistics.median(per_round),
                                                                      "per_round": per_round}
    return summary


def interleaved_targets(both: dict) -> list[dict]:
    """One row per RATIOS entry: met when the median of the rounds' ratios meets its goal."""
    out = []
    servers = both.get("servers", {})
    for r in RATIOS:
        ratio = both.get("ratios", {}).get(f"{r.numerator} / {r.denominator}")
        if ratio is None:
            skipped = [n.removesuffix(", 1 client") for n in (r.numerator, r.denominator)]
            why = both.get("failed") or "; ".join(
                f"{n}: {servers[n]['skipped']}" for n in skipped if "skipped" in servers.get(n, {})
            ) or "interleaved stage skipped"
            out.append(_missing(r.title, why))
            continue
        m = ratio["median"]
        medians = both["median_rps" if r.metric == "rps" else "median_p50_ms"]
        unit = "req/s" if r.metric == "rps" else "ms p50"
        a, b = (f"{n} {medians[n]:.1f} {unit} on {servers.get(n.removesuffix(', 1 client'), {}).get('engine', '?')}"
                for n in (r.numerator, r.denominator))
        note = ""
        if r.numerator == "service" and r.denominator == "service-bf16" and \
                servers.get("service", {}).get("engine") == servers.get("service-bf16", {}).get("engine"):
            note = "; both served the same engine: the model has no accepted INT8 graph (see the raw table)"
        per_round = ", ".join(f"{x:.2f}" for x in ratio["per_round"])
        out.append(_target(
            r.title, f"median of {len(ratio['per_round'])} rounds: {m:.2f} x ({a} vs {b}; per round {per_round}){note}",
            f"{r.op} {r.goal:g} x", m / r.goal, _OPS[r.op](m, r.goal),
            f"{_pct(m / r.goal - 1)} vs target" if r.op != "<=" else _under(m, r.goal, "x"),
        ))  # fmt: skip
    return out


def _mib(x: float) -> str:
    return f"{x:.0f} MiB"


def _under(value: float, limit: float, unit: str = "MiB") -> str:
    """The margin of an at-most target: headroom when met, by how much it is over when not."""
    if value <= limit:
        return f"{_pct(1 - value / limit)} headroom"
    return f"over by {value - limit:.{0 if unit == 'MiB' else 2}f} {unit}".rstrip()


def lean_targets(lean: dict | None) -> list[dict]:
    """Issue 21's memory, start-up and no-PyTorch rows from the `lean` stage (one server, defaults)."""
    names = [
        f"(21) RSS of the served tree after warm-up and after a 32-client load <= {MAX_RSS_MB / MiB_PER_GiB:g} GiB",
        f"(21) RSS after a hostile burst <= {MAX_HOSTILE_GROWTH:g} x the RSS after the load",
        f"(21) peak RSS during start-up (launch to every worker answering) <= {MAX_STARTUP_RSS_MB / MiB_PER_GiB:g} GiB",
        f"(21) cold start: `bentoml serve` to every worker answering <= {MAX_COLD_START_S:g} s",
        "(21) no process of the served tree maps libtorch",
    ]
    if not lean or "start" not in lean:
        why = (lean or {}).get("failed", "lean stage skipped")
        return [_missing(n, why) for n in names]
    out = []
    start = lean["start"]
    warm, loaded = lean.get("memory_warm"), lean.get("memory_after_load")
    if warm and loaded:
        top = max(warm["rss_mb"], loaded["rss_mb"])
        root, *children = loaded["processes"]  # tree_memory lists the `bentoml serve` process first
        parts = f"`bentoml serve` {_mib(root['rss_mb'])}, its children " + ", ".join(_mib(p["rss_mb"]) for p in children)
        out.append(_target(
            names[0], f"warm {_mib(warm['rss_mb'])}, after {lean['load']['seconds']:.0f} s at {lean['load']['clients']} "
                      f"clients {_mib(loaded['rss_mb'])} ({start['workers']} workers; PSS {_mib(loaded['pss_mb'])}; "
                      f"{parts})",
            f"<= {_mib(MAX_RSS_MB)}", top / MAX_RSS_MB, top <= MAX_RSS_MB, _under(top, MAX_RSS_MB)))
    else:
        out.append(_missing(names[0], lean.get("failed", "not reached")))
    after = lean.get("memory_after_hostile")
    if loaded and after:
        burst = lean["hostile"]
        growth = after["rss_mb"] / loaded["rss_mb"]
        out.append(_target(
            names[1], f"{_mib(after['rss_mb'])} = {growth:.2f} x {_mib(loaded['rss_mb'])} after {burst['seconds']:.0f} s of "
                      f"{burst['clients']} hostile clients ({burst['requests']} requests, {burst['wrong']} wrong answers, "
                      f"/readyz {burst['readyz_after']})",
            f"<= {MAX_HOSTILE_GROWTH:g} x", growth / MAX_HOSTILE_GROWTH, growth <= MAX_HOSTILE_GROWTH,
            _under(growth, MAX_HOSTILE_GROWTH, "x")))
    else:
        out.append(_missing(names[1], lean.get("failed", "not reached")))
    peak = start["startup_rss"]
    out.append(_target(
        names[2], f"{_mib(peak['peak_mb'])} at {peak['peak_at_s']:.1f} s ({peak['samples']} samples, every "
                  f"{peak['interval_s'] * 1000:.0f} ms)",
        f"<= {_mib(MAX_STARTUP_RSS_MB)}", peak["peak_mb"] / MAX_STARTUP_RSS_MB, peak["peak_mb"] <= MAX_STARTUP_RSS_MB,
        _under(peak["peak_mb"], MAX_STARTUP_RSS_MB)))
    every = start["every_worker_s"]
    if every is None:
        out.append(_target(names[3], f"only {len(start['worker_first_answer_s'])} of {start['workers']} workers answered",
                           f"<= {MAX_COLD_START_S:g} s", None, False, "not every worker answered"))
    else:
        out.append(_target(
            names[3], f"{every:.1f} s for {start['workers']} workers (first /readyz {start['readyz_s']:.1f} s, first "
                      f"/classify answer {start.get('first_answer_s', float('nan')):.1f} s; engine speed "
                      f"{start['speed_cache']})",
            f"<= {MAX_COLD_START_S:g} s", every / MAX_COLD_START_S, every <= MAX_COLD_START_S,
            f"{MAX_COLD_START_S - every:+.1f} s headroom" if every <= MAX_COLD_START_S else
            f"over by {every - MAX_COLD_START_S:.1f} s"))
    torch_maps = lean.get("libtorch")
    if torch_maps is None:
        out.append(_missing(names[4], "not checked"))
    else:
        out.append(_target(names[4], f"{len(torch_maps['mapped'])} of {torch_maps['processes']} processes map it"
                           + (f": {torch_maps['mapped']}" if torch_maps["mapped"] else ""),
                           "none", None, not torch_maps["mapped"], "none" if not torch_maps["mapped"] else "PyTorch loaded"))
    return out


def bento_target(bento: dict | None) -> dict:
    """(21) the first answer after import of a built Bento into an empty home: reported, no goal."""
    name = "(21) a built Bento imported into an empty BentoML home: import + `bentoml serve` to the first answer"
    if not bento or "first_answer_s" not in bento:
        return _missing(name, (bento or {}).get("failed") or (bento or {}).get("skipped") or "bento stage skipped")
    every = bento.get("every_worker_s")
    return _target(
        name, f"{bento['import_to_first_answer_s']:.1f} s: import {bento['import_s']:.1f} s, then first answer "
              f"{bento['first_answer_s']:.1f} s after launch (every worker "
              f"{'-' if every is None else f'{every:.1f}'} s; engine speed {bento['speed_cache']}; build "
              f"{bento['build_s']:.0f} s, {_mib(bento['bento_mb'])})",
        "reported", None, None, "no target")


PEERS = {"torch": ("torch", "torch server skipped"), "litserve": ("LitServe", "LitServe peer skipped or not installed")}


def _peer_name(peer: str, clients: int, how: str) -> str:
    if peer == "torch":
        return f"(9) engine-served >= {ENGINE_SPEEDUP:g} x PyTorch-served at {clients} clients (HTTP, {how})"
    return f"(9) ahead of the LitServe peer at {clients} clients (HTTP, {how})"


def _peer_target(peer: str, clients: int, how: str, ratio: float, measured: str) -> dict:
    """(9) the service against a peer: >= ENGINE_SPEEDUP x PyTorch-served, ahead of LitServe."""
    name = _peer_name(peer, clients, how)
    if peer == "torch":
        return _target(name, measured, f">= {ENGINE_SPEEDUP:g} x", ratio, ratio >= ENGINE_SPEEDUP,
                       f"{_pct(ratio / ENGINE_SPEEDUP - 1)} vs target")
    return _target(name, measured, "> 1.00 x", ratio, ratio > 1.0, f"{_pct(ratio - 1)} throughput")


def _latency_target(results: dict, engine: str | None, allowance: float, issue: int, how: str = "") -> dict:
    name = f"({issue}) HTTP p50 at 1 client <= raw single-clip latency + {allowance:g} ms{how}"
    http1 = point(results, "batching", "http", 1)
    raw1 = results.get("raw", {}).get(engine, {}).get("batches", {}).get(1) if engine else None
    if not (http1 and raw1):
        return _missing(name, "raw or served stage skipped")
    limit = raw1["latency_ms_p50"] + allowance
    p50 = http1["latency_ms"]["p50"]
    idle, cold = raw1.get("latency_ms_p50_after_idle"), raw1.get("latency_ms_p50_cold")
    context = (f"; {idle:.1f} ms after 1 ms idle" if idle else "") + (f", {cold:.1f} with caches evicted" if cold else "")
    grpc1 = point(results, "batching", "grpc", 1)  # same worker and core, without BentoML's HTTP stack
    via_grpc = f" (gRPC {grpc1['latency_ms']['p50']:.1f} ms)" if grpc1 else ""
    return _target(
        name, f"{p50:.1f} ms{via_grpc} vs raw {raw1['latency_ms_p50']:.1f} ms ({engine}, batch 1{context})",
        f"<= {limit:.1f} ms",
        p50 / limit, p50 <= limit, _ms_margin(limit - p50),
    )  # fmt: skip


# --- Markdown ------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# Benchmark: {meta['model']} ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"{meta['started']}, commit {meta['commit']}, {meta['cpu']} ({meta['cores']} cores, bf16 {meta['bf16']}), "
        f"load average at start {meta['loadavg_start']:.2f}, at end {meta.get('loadavg_end', float('nan')):.2f}. "
        f"HTTP load client: {meta['http_client']}. Clip: {meta['clip']}.",
        "",
    ]
    if meta["loadavg_start"] > 0.25 * meta["cores"]:
        lines += [f"**The machine was not quiet** (load {meta['loadavg_start']:.2f} on {meta['cores']} cores): "
                  "figures are low and noisy.", ""]
    lines += ["## Targets", "", "| target | measured | goal | met | margin |", "|---|---|---|---|---|"]
    for t in results.get("targets", []):
        met = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {met} | {t['margin']} |")

    raw = results.get("raw")
    if raw:
        sizes = sorted({int(b) for r in raw.values() for b in r.get("batches", {})})
        lines += ["", "## Raw model in process (clips/s; latency of one call, ms)", "",
                  "| engine | agrees now (max prob diff) | stored report | " + " | ".join(f"b={b}" for b in sizes) + " |",
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
        lines.append(f"\nBest: {best['engine']} at batch {best['batch']}: {best['clips_per_s']:.1f} clips/s.")

    both = results.get("interleaved", {})
    if both.get("rounds"):
        names = list(both["rounds"][0])
        servers = both.get("servers", {})
        heads = [f"{n}: {'p50 ms' if n.endswith(', 1 client') else 'req/s'}" for n in names]
        lines += ["", f"## Interleaved at {both['clients']} clients (servers up together, each loaded in turn while the "
                  f"others are paused, {both['seconds']:g} s each; the ', 1 client' columns are p50 latency at one client)",
                  "", "Servers: " + "; ".join(f"{n} = {s.get('engine', s.get('skipped', '?'))}"
                                              + (f" ({' '.join(f'{k}={v}' for k, v in s['env'].items())})" if s.get("env") else "")
                                              for n, s in servers.items()) + ".", "",
                  "| round | " + " | ".join(heads) + " |", "|---" * (len(names) + 1) + "|"]
        for i, row in enumerate(both["rounds"], 1):
            cells = [_f(row[n]["p50_ms" if n.endswith(", 1 client") else "rps"]) + (f" ({row[n]['errors']} errors)"
                     if row[n].get("errors") else "") for n in names]  # fmt: skip
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
        medians = [_f(both["median_p50_ms"][n] if n.endswith(", 1 client") else both["median_rps"][n])
                   for n in names if n in both.get("median_rps", {})]
        lines.append("| median | " + " | ".join(medians) + " |")
    elif both.get("failed"):
        lines += ["", "## Interleaved", "", f"failed: {both['failed']}"]

    lean = results.get("lean")
    if lean and "start" in lean:
        start = lean["start"]
        lines += ["", f"## Start-up and memory ({lean.get('engine', '?')}, {start['workers']} workers, defaults)", "",
                  f"`bentoml serve` to the first /readyz {_f(start['readyz_s'])} s, to every worker answering "
                  f"{_f(start['every_worker_s'])} s (each worker's first answer: "
                  + ", ".join(f"pid {pid} {t:.1f} s" for pid, t in start["worker_first_answer_s"].items())
                  + f"), first /classify answer {_f(start.get('first_answer_s'))} s; start-up RSS peak "
                  f"{_f(start['startup_rss']['peak_mb'], 0)} MiB; the engine's speed was {start['speed_cache']}.", "",
                  "| when | tree RSS MiB | tree PSS MiB | per process RSS MiB |", "|---|---|---|---|"]
        for key, when in (("memory_warm", "after warm-up"), ("memory_after_load", "after the 32-client load"),
                          ("memory_after_hostile", "after the hostile burst")):
            if m := lean.get(key):
                per = ", ".join(f"{p['rss_mb']:.0f} (`{p['command']}`)" for p in m["processes"])
                lines.append(f"| {when} | {m['rss_mb']:.0f} | {m['pss_mb']:.0f} | {per} |")
        if burst := lean.get("hostile"):
            lines += ["", f"Hostile burst: {burst['clients']} clients for {burst['seconds']:.0f} s, answers "
                      f"{burst['statuses']}, {burst['wrong']} wrong; cases sent: {burst['per_case']}."]
            lines += [f"- {f}" for f in burst["failures"][:5]]
    elif lean and lean.get("failed"):
        lines += ["", "## Start-up and memory", "", f"failed: {lean['failed']}"]

    bento = results.get("bento")
    if bento and "first_answer_s" in bento:
        lines += ["", "## A built Bento, imported into an empty BentoML home (and an empty HOME)", "",
                  f"`bentoml build` {bento['build_s']:.1f} s, `bentoml export` {bento['export_s']:.1f} s "
                  f"({bento['bento_mb']:.0f} MiB), `bentoml import` {bento['import_s']:.1f} s; `bentoml serve "
                  f"{bento['bento']}` to the first /readyz {bento['readyz_s']:.1f} s, to every worker "
                  f"{_f(bento['every_worker_s'])} s, to the first /classify answer {bento['first_answer_s']:.1f} s "
                  f"(engine speed {bento['speed_cache']}); start-up RSS peak {bento['startup_rss']['peak_mb']:.0f} MiB."]
    elif bento:
        lines += ["", "## Bento", "", f"{bento.get('failed') or bento.get('skipped')}"]

    share = results.get("sharing")
    if share and "wide" in share:
        lines += ["", f"## Sharing the cores ({share['engine']}, batches of {share['batch']}, "
                  f"{share['threads']} threads wide or {share['stream_count']} single-threaded streams)", "",
                  "| engine runs | alone: engine clips/s | beside a feature thread: engine clips/s | features clips/s |",
                  "|---|---|---|---|"]
        for mode in ("wide", "streams"):
            alone, beside = share[mode], share[f"{mode}_beside_features"]
            lines.append(f"| {mode} | {_f(alone['engine_clips_per_s'])} | {_f(beside['engine_clips_per_s'])} | "
                         f"{_f(beside['features_clips_per_s'])} |")

    spark = results.get("spark")
    if spark and "files_per_s" in spark:
        ratio = spark.get("ratio_to_raw_best")
        lines += ["", "## Batch on Spark", "",
                  f"`python -m batch.classify` on {spark['master']}: {spark['files']} files in {spark['seconds']:.1f} s "
                  f"= {spark['files_per_s']:.1f} files/s end to end (JVM start-up included)"
                  + (f", {ratio:.2f} x the raw in-process best." if ratio else ".")]
    elif spark:
        lines += ["", "## Batch on Spark", "", f"failed: {spark.get('failed', '')}"]

    feats = results.get("features")
    if feats:
        lines += ["", f"## Features per clip ({feats['clip']['seconds']:g} s, {feats['clip']['sample_rate']} Hz mono; "
                  "Classifier.prepare, one thread)", "",
                  "| format | bytes | decode ms | resample + log-mel ms | total ms (p90) | total ms, caches evicted |",
                  "|---|---|---|---|---|---|"]
        for fmt, r in feats.items():
            if fmt != "clip":
                lines.append(f"| {fmt} | {r['bytes']} | {_f(r['decode_ms'])} | {_f(r['features_ms'])} | "
                             f"{_f(r['prepare_ms'])} ({_f(r['prepare_ms_p90'])}) | {_f(r.get('prepare_ms_cold'))} |")
        if results.get("ceiling_with_features"):
            c = results["ceiling_with_features"]
            lines.append(f"\nCPU-bound ceiling of a served WAV clip on {meta['cores']} cores (network + features): "
                         f"{c:.1f} clips/s (context for the throughput target, not a target).")

    served = results.get("served", {})
    if served:
        lines += ["", "## Served (closed loop: each client sends its next request when answered)", "",
                  "| server | transport | clients | req/s | p50 ms | p95 ms | p99 ms | mean batch | errors | "
                  "server CPU ms/req | client CPU % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for config, s in served.items():
            if "skipped" in s:
                lines.append(f"| {config} | {s['skipped']} |" + " |" * 9)
                continue
            label = f"{config} ({s.get('engine', '?')}, max batch {s.get('max_batch_size', '?')})"
            for transport in ("http", "grpc"):
                for p in s.get(transport, []):
                    lat = p["latency_ms"]
                    cpu = _f(1000 * p["server_cpu_s"] / p["ok"], 1) if p.get("server_cpu_s") and p["ok"] else "-"
                    client = _f(100 * p["client_cpu_s"] / p["seconds"] / meta["cores"], 0)
                    errors = p["errors"] if not p["errors"] else f"{p['errors']} {p['statuses']}"
                    lines.append(f"| {label} | {transport} ({p['client']}) | {p['clients']} | {_f(p['rps'])} | "
                                 f"{_f(lat['p50'])} | {_f(lat['p95'])} | {_f(lat['p99'])} | {_f(p['mean_batch'], 2)} | "
                                 f"{errors} | {cpu} | {client} |")
    soak = results.get("soak")
    if soak:
        rss = soak.get("server_rss_mb") or {}
        lines += ["", "## Soak", "",
                  f"{soak['clients']} clients for {soak['seconds']:.0f} s, {soak['requests']} requests: "
                  f"{soak['good_ok']} good files answered 200, {soak['good_failed']} good files failed, "
                  f"{soak['bad_refused_correctly']} bad files refused with the right status and kind, "
                  f"{soak['bad_wrong']} wrong, {soak['transport_errors']} transport errors; good-file latency "
                  f"p50 {_f(soak['good_latency_ms']['p50'])} ms, p99 {_f(soak['good_latency_ms']['p99'])} ms; "
                  f"/readyz after: {soak['readyz_after']}; server RSS {_f(rss.get('before'), 0)} -> "
                  f"{_f(rss.get('after'), 0)} MB."]
        lines += [f"- {f}" for f in soak["failures"][:5]]
    lines += ["", f"Run time {meta.get('elapsed_s', 0):.0f} s. Command: `{meta['command']}`.", ""]
    return "\n".join(lines)


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
        ax_tput.axhline(THROUGHPUT_SHARE * results["raw_best"]["clips_per_s"], color="grey", linestyle=":",
                        label=f"{THROUGHPUT_SHARE} x raw best")
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
