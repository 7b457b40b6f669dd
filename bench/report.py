"""Turn one run's measurements into targets (met / missed, by how much), Markdown, a plot and JSON."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

# The targets of issues 6 and 9, as ratios against what this run measured.
THROUGHPUT_SHARE = 0.85  # (6) HTTP req/s at 32 clients >= this x the best raw in-process clips/s
LATENCY_ALLOWANCE_MS = 10.0  # (6) HTTP p50 at 1 client <= raw single-clip latency + this
ENGINE_LATENCY_ALLOWANCE_MS = 5.0  # (9) the same, with the served engine's own latency
ENGINE_SPEEDUP = 2.0  # (9) engine-served req/s at 32 clients >= this x PyTorch-served


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
    if paired := results.get("interleaved", {}).get("latency"):
        out.append(_paired_latency_target(paired, ENGINE_LATENCY_ALLOWANCE_MS))
    out.append(_latency_target(results, engine, ENGINE_LATENCY_ALLOWANCE_MS, 9, " (sequential stages)"))

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

    # The issue-9 peer ratios: from the interleaved rounds, then from the sequential stages.
    both = results.get("interleaved", {})
    for peer in PEERS:
        if f"ratio_to_{peer}" in both:
            rps = both["median_rps"]
            out.append(_peer_target(
                peer, both["clients"], "interleaved", both[f"ratio_to_{peer}"],
                f"median of {len(both['rounds'])} rounds: {both[f'ratio_to_{peer}']:.2f} x "
                f"({rps['service']:.1f} vs {rps[peer]:.1f} req/s)"))
    for peer, (label, why_missing) in PEERS.items():
        theirs = point(results, peer, "http", 32)
        if http32 and theirs and theirs["rps"] > 0:
            ratio = http32["rps"] / theirs["rps"]
            measured = f"{http32['rps']:.1f}{f' ({engine})' if peer == 'torch' else ''} vs {theirs['rps']:.1f} req/s ({label})"
            out.append(_peer_target(peer, 32, "sequential stages", ratio, measured))
        else:
            out.append(_missing(_peer_name(peer, 32, "sequential stages"), why_missing))
    return out


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


def paired_latency(engine: str, rounds: list[dict]) -> dict:
    """The issue-9 latency pairs of the interleaved rounds (each {"p50_ms", "raw_ms"}: the service
    at one client, then the engine's one-clip call), with each round's difference and the medians."""
    rounds = [{**row, "gap_ms": row["p50_ms"] - row["raw_ms"]} for row in rounds]
    medians = {f"median_{k}": statistics.median(row[k] for row in rounds) for k in ("p50_ms", "raw_ms", "gap_ms")}
    return {"clients": 1, "engine": engine, "rounds": rounds, **medians}


def _paired_latency_target(paired: dict, allowance: float) -> dict:
    """(9) from the interleaved rounds: each round's HTTP p50 at one client minus the served engine's
    single-clip latency measured right after it in process; the median of those differences."""
    rounds = paired["rounds"]
    gap = paired["median_gap_ms"]
    per_round = ", ".join(f"{row['gap_ms']:.1f}" for row in rounds)
    return _target(
        f"(9) HTTP p50 at 1 client <= raw single-clip latency + {allowance:g} ms (interleaved)",
        f"median of {len(rounds)} rounds: p50 - raw = {gap:.1f} ms (p50 {paired['median_p50_ms']:.1f} ms, raw "
        f"{paired['median_raw_ms']:.1f} ms, {paired['engine']}; per round {per_round})",
        f"<= +{allowance:g} ms", gap / allowance, gap <= allowance,
        _ms_margin(allowance - gap),
    )  # fmt: skip


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
                  "| engine | agrees | " + " | ".join(f"b={b}" for b in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]
        for label, r in raw.items():
            if "skipped" in r:
                lines.append(f"| {label} | {r['skipped']} |" + " |" * len(sizes))
                continue
            a = r["agreement"]
            cells = [f"{_f(r['batches'][b]['clips_per_s'])} / {_f(r['batches'][b]['latency_ms_p50'])} ms" for b in sizes]
            lines.append(f"| {label} | {a['ok']} ({a['max_prob_diff']:.4f}) | " + " | ".join(cells) + " |")
        best = results["raw_best"]
        lines.append(f"\nBest: {best['engine']} at batch {best['batch']}: {best['clips_per_s']:.1f} clips/s.")

    both = results.get("interleaved", {})
    if both.get("rounds"):
        names = list(both["rounds"][0])
        paired = both.get("latency")
        extra = ["service p50 at 1 client, ms", f"raw {paired['engine']} one clip, ms", "difference, ms"] if paired else []
        lines += ["", f"## Interleaved at {both['clients']} clients (req/s; servers up together, loaded in turn while the others are paused, "
                  f"{both['seconds']:g} s each; then, in the same round, the service at one client and the served engine's "
                  "single-clip call in process with every server paused)", "",
                  "| round | " + " | ".join(names + extra) + " |", "|---" * (len(names) + len(extra) + 1) + "|"]
        keys = ("p50_ms", "raw_ms", "gap_ms")
        for i, row in enumerate(both["rounds"], 1):
            cells = [_f(row[n]["rps"]) for n in names] + ([_f(paired["rounds"][i - 1][k]) for k in keys] if paired else [])
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
        cells = [_f(both["median_rps"][n]) for n in names] + ([_f(paired[f"median_{k}"]) for k in keys] if paired else [])
        lines.append("| median | " + " | ".join(cells) + " |")
    elif both.get("failed"):
        lines += ["", "## Interleaved", "", f"failed: {both['failed']}"]

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
