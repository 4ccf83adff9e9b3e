"""Report parts of the deployment benchmark v2: run order and drift, serving under load, and the
serving line of the deployment decision.

    deployment_parts(res, s)    "Run order and drift" and "Serving under load" subsections of
                                the deployment section `s`
    decision_line(rows, margin) the sentence the deployment decision gives (or None)
    p99_cell(latency_ms)        p99 with its interval, or "too few requests (n < 100)"
    percentile_cell(lat, q)     p90 / p95 / p99, or "too few timed calls (n < N)"

Reads the `bench_blocks` table (`records.BenchBlockRecord`: the order each block's units ran in
and the block's drift reference) and the `serving` table (`records.ServingRecord`: one load run
per configuration, popularity pattern and offered rate). Configurations are labelled, ordered
and weighed against each other by what `peftlab.bench.serving_configs` registers for them; the
fast path table by what the bench modes declare (`Mode.fast_path`, `Mode.folds_adapter`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.bench.load import PATTERNS
from peftlab.bench.mode import FAST_VARIANT
from peftlab.bench.modes import MODES
from peftlab.bench.serving_configs import SERVING_CONFIGS
from peftlab.bench.timing import MIN_P99_REQUESTS
from peftlab.records import BenchBlockRecord, ServingRecord, read
from peftlab.stages.report import figures as figs
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Paragraph, Section, Table

CONCURRENCY_1 = "at concurrency 1"  # how every batch/latency throughput is labelled


def p99_cell(lat: dict[str, Any] | None, unit: str = "requests") -> str:
    """p99 (ms) with its bootstrap interval, only when it rests on >= 100 observations; else
    'too few <unit> (n < 100)' (unit: "requests" under load, "timed calls" for the latency
    tables, where one observation is one batch)."""
    if not lat or lat.get("p99") is None:
        return f.MISSING
    if lat.get("p99_reliable") is False or lat.get("p99_note"):
        if unit == "requests":
            return str(lat.get("p99_note") or "too few requests")
        return f"too few {unit} (n < {MIN_P99_REQUESTS})"
    ci = lat.get("p99_ci")
    return f.ms(lat["p99"]) + (f" [{f.ms(ci[0])}, {f.ms(ci[1])}]" if ci else "")


def percentile_cell(lat: dict[str, Any] | None, q: int, unit: str = "timed calls") -> str:
    """Percentile q (90, 95 or 99) of a latency summary, or 'too few <unit> (n < N)' where fewer
    than N = 1 / (1 - q/100) observations back it (10 for p90, 20 for p95, 100 for p99: at least
    one observation lies beyond the percentile; p99's rule, `bench.timing.MIN_P99_REQUESTS`)."""
    if q == 99:
        return p99_cell(lat, unit)
    if not lat or lat.get(f"p{q}") is None:
        return f.MISSING
    need = round(100 / (100 - q))
    if (lat.get("count") or 0) < need:
        return f"too few {unit} (n < {need})"
    return f.ms(lat[f"p{q}"])


def config_label(config: str) -> str:
    """What a serving configuration holds, in words (its registered label); a stored name no
    configuration is registered under here is shown as it is."""
    return SERVING_CONFIGS.get(config).label if config in SERVING_CONFIGS else config


def config_order(config: str) -> int:
    """Where a configuration sits in tables and figures: registration order, unknown ones last."""
    names = SERVING_CONFIGS.names()
    return names.index(config) if config in names else len(names)


def _reliable_p99(lat: dict[str, Any] | None) -> float | None:
    if not lat or lat.get("p99_reliable") is False or lat.get("p99_note"):
        return None
    return lat.get("p99")


# ----------------------------------------------------------------------------- order and drift


def order_and_drift(blocks: list[dict[str, Any]], s: Section) -> None:
    """The order each block ran in and its drift reference (a table), into section `s`."""
    if not blocks:
        s.add(Paragraph.of("No run-order records (filled by peftlab bench)."))
        return
    rows = []
    for b in blocks:
        for d in b.get("drift") or []:
            rows.append([b["block"], str(len(b["order"])), str(b.get("reference") or f.MISSING),
                         str(d["batch_size"]), str(d["seq_len"]), f.ms(d.get("first_p50_ms")),
                         f.ms(d.get("repeat_p50_ms")),
                         f.pct(d["ratio"] - 1) if d.get("ratio") is not None else
                         str(b.get("reference_status") or f.MISSING)])
    scheme = next((b["scheme"] for b in blocks if b.get("reference")), blocks[0]["scheme"])
    s.add(Paragraph.of(
        f"Run order: {scheme}. The reference's median latency at the start and at the end of "
        "its block shows how far the machine's speed drifted while the block ran; a drift of "
        "the size of a comparison's difference makes that comparison fragile."))
    if rows:
        s.add(Table(["Block", "Units", "Reference (run first and again last)", "Batch",
                     "Length", "Median at start (ms)", "Median at end (ms)", "Drift"], rows,
                    numeric=[False, True, False, True, False, True, True, True]))
    s.add(Table(["Block", "Order the units ran in"],
                [[b["block"], " \u2192 ".join(b["order"])] for b in blocks]))


# ----------------------------------------------------------------------------- serving


def latency_load_figure(rows: list[dict[str, Any]]) -> bytes:
    """p50 (solid) and p99 (dashed, where it rests on >= 100 requests) latency against the
    offered load, one line per configuration, one panel per popularity pattern."""
    patterns = [p for p in PATTERNS if any(r["pattern"] == p for r in rows)]
    configs = sorted({r["config"] for r in rows}, key=config_order)
    fig = figs.new_figure(max(4.2, 3.4 * len(patterns)), 3.4)
    for ax, pattern in zip(figs._panels(fig, len(patterns)), patterns, strict=True):
        values = []
        for config in configs:
            pts = sorted((r["offered_rate"], (r["row"].get("latency_ms") or {}))
                         for r in rows if r["pattern"] == pattern and r["config"] == config)
            pts = [(x, lat) for x, lat in pts if lat]
            if not pts:
                continue
            c = figs.color(configs, config)
            xs = [x for x, _ in pts]
            p50 = [lat["p50"] for _, lat in pts]
            values += p50
            ax.plot(xs, p50, "o-", color=c, ms=4, label=config)
            p99 = [(x, _reliable_p99(lat)) for x, lat in pts]
            p99 = [(x, y) for x, y in p99 if y is not None]
            if p99:
                ax.plot(*zip(*p99, strict=True), "s--", color=c, ms=3, alpha=0.7)
                values += [y for _, y in p99]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_xscale("log")
        figs.style_axes(ax, f"popularity: {pattern}", "offered load (requests/s)",
                        "latency (ms): p50 solid, p99 dashed")
    return figs.to_png(fig)


def saturation_text(rows: list[dict[str, Any]], config: str) -> str:
    """'uniform 40.0 req/s, skewed none sustained': the achieved throughput at the highest rate
    the configuration sustained, per popularity pattern (from the sweep's stored figures)."""
    parts = []
    for pattern in [p for p in PATTERNS if any(r["config"] == config and r["pattern"] == p
                                               for r in rows)]:
        mine = [r for r in rows if r["config"] == config and r["pattern"] == pattern]
        rate = next((r.get("saturation_rate") for r in mine
                     if r.get("saturation_rate") is not None), None)
        thr = next((r.get("saturation_throughput") for r in mine
                    if r.get("saturation_throughput") is not None), None)
        if rate is None and any("saturation_rate" in r for r in mine):
            parts.append(f"{pattern} no rate sustained")
        elif rate is None:  # rows without the sweep's figures: the sustained runs themselves
            ok = [r["offered_rate"] for r in mine if r.get("sustained")]
            parts.append(f"{pattern} sustained up to {max(ok):g} req/s offered" if ok
                         else f"{pattern} no rate sustained")
        else:
            parts.append(f"{pattern} {f.rate(thr)} req/s achieved at {rate:g} offered")
    return ", ".join(parts)


def decision_line(rows: list[dict[str, Any]], margin: float) -> str | None:
    """What the serving runs show about one base with adapters against k merged models, in
    words that decide nothing the runs did not test; None without both.

    Weights: the bytes each configuration holds are counted, not sampled; per task, merged holds
    one model (B = merged / k) and the adapters one adapter each (a = (adapters - B) / k), so one
    base with adapters holds fewer bytes from the smallest n with B + n a < n B, i.e.
    n > B / (B - a). p99: at an offered rate both configurations sustained, the adapters' p99 is
    at most (1 + margin) x merged's, both resting on >= 100 requests (a rule applied to one load
    run per rate, not a test). Saturation: per configuration and pattern, as stored (one load run
    per rate, descriptive); a configuration that sustained no rate says so.
    """
    reference = next((c.name for c in SERVING_CONFIGS.values() if c.reference), None)
    merged = [r for r in rows if r["config"] == reference]
    if not merged:
        return None
    parts = []
    k = merged[0]["k"]
    shared = [c.name for c in SERVING_CONFIGS.values() if c.shares_base]
    for config in [c for c in shared if any(r["config"] == c for r in rows)]:
        mine = [r for r in rows if r["config"] == config]
        m_bytes = merged[0]["row"]["memory"]["served_weight_bytes"]
        a_bytes = mine[0]["row"]["memory"]["served_weight_bytes"]
        per_model = m_bytes / k
        adapter = (a_bytes - per_model) / k
        from_n = (int(np.floor(per_model / (per_model - adapter))) + 1
                  if per_model > adapter else None)
        equal = {}
        compared = False  # some rate where both p99s rest on enough requests
        for pattern in [p for p in PATTERNS if any(r["pattern"] == p for r in mine)]:
            ok = []
            for r in sorted((r for r in mine if r["pattern"] == pattern),
                            key=lambda r: r["offered_rate"]):
                ref = next((m for m in merged if m["pattern"] == pattern
                            and m["offered_rate"] == r["offered_rate"]), None)
                if ref is None:
                    continue
                a, b = _reliable_p99(r["row"].get("latency_ms")), \
                    _reliable_p99(ref["row"].get("latency_ms"))
                compared = compared or (a is not None and b is not None)
                if r["sustained"] and ref["sustained"] and a is not None and b is not None \
                        and a <= (1 + margin) * b:
                    ok.append(r["offered_rate"])
                else:
                    break  # equal p99 from the lowest rate up, to the first rate it is not
            equal[pattern] = ok[-1] if ok else None
        if compared:
            loads = ("its p99 is within {:.0f}% of theirs ({}; one load run per rate, not a "
                     "test)").format(100 * margin, ", ".join(
                         f"{p}: up to {x:g} requests/s" if x is not None
                         else f"{p}: at no rate tried" for p, x in equal.items()))
        else:
            loads = ("p99 not compared: no load run of either rests on the 100 requests a p99 "
                     "needs")
        parts.append((config_label(config),
            f"{f.nbytes(a_bytes)} of weights against "
            f"{f.nbytes(m_bytes)} for {k} merged models (byte counts, exact: one base with "
            "adapters holds fewer weight bytes "
            + (f"from {from_n} tasks on" if from_n is not None else "at no number of tasks")
            + f"; one model {f.nbytes(per_model)}, one adapter {f.nbytes(adapter)}); {loads}"))
    if not parts:
        return None
    # configurations holding the same bytes with the same p99 finding share one sentence
    same: dict[str, list[str]] = {}
    for label, body in parts:
        same.setdefault(body, []).append(label)
    parts = [f"{labels[0]} holds {body}" if len(labels) == 1 else
             f"{' and '.join(labels)} each hold {body}" for body, labels in same.items()]
    saturation = [f"{c} {saturation_text(rows, c)}" for c in
                  sorted({r["config"] for r in rows}, key=config_order)]
    return ("; ".join(parts) + ". Saturation throughput (one load run per rate, descriptive, "
            "not tested): " + "; ".join(saturation) + ".")


def serving_decision(res: Any, rows: list[dict[str, Any]] | None = None) -> str | None:
    """The decision line for the study (`decision_line` at bench.serving.p99_margin)."""
    if rows is None:
        rows = [r.dump() for r in read(res.ctx.store, ServingRecord)]
    serving = res.spec.bench.serving
    return decision_line(rows, serving.p99_margin if serving is not None else 0.10)


def _fast_path_pairs() -> list[tuple[str, str]]:
    """(mode, reference) per registered mode with a FAST_VARIANT that serves one adapter: the
    reference is the mode folding the adapter into the base that it declares a comparison with
    (unmerged -> merged)."""
    pairs = []
    for mode in sorted(MODES.values(), key=lambda m: m.order):
        if not mode.fast_path or mode.max_artifacts != 1:
            continue
        ref = next((c.other for c in mode.comparisons if c.reference == "same"
                    and c.other in MODES and MODES.get(c.other).folds_adapter), None)
        if ref is not None:
            pairs.append((mode.name, ref))
    return pairs


def fast_path_ratios(bench: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode with a fast path (`_fast_path_pairs`), task and sweep point where its "+fast"
    variant ran: mode/reference and mode+fast/reference (e.g. unmerged/merged and
    unmerged+fast/merged), each the median over seeds of the ratio of the same seed's medians
    (units of one seed ran in one block, interleaved). bench: `results.bench_rows` rows."""
    p50: dict[tuple[Any, ...], float] = {}
    for r in bench:
        if r["ok"] and r["task"] is not None and r["seed"] is not None:
            p50[(r["mode"], r["task"], r["method"], r["seed"], r["batch_size"],
                 str(r["seq_len"]))] = r["p50_ms"]
    out = []
    for mode, ref in _fast_path_pairs():
        fast_mode = mode + FAST_VARIANT
        keys = sorted({k[1:] for k in p50 if k[0] == fast_mode}, key=str)
        groups: dict[tuple[Any, ...], list[tuple[float, float]]] = defaultdict(list)
        for task, method, seed, batch, seq in keys:
            m = p50.get((ref, task, method, seed, batch, seq))
            e = p50.get((mode, task, method, seed, batch, seq))
            fst = p50[(fast_mode, task, method, seed, batch, seq)]
            if m and e:
                groups[(task, method, batch, seq)].append((e / m, fst / m))
        for (task, method, batch, seq), pairs in groups.items():
            out.append({"mode": mode, "reference": ref, "task": task, "method": method,
                        "batch_size": batch, "seq_len": seq, "n": len(pairs),
                        "eager": float(np.median([p[0] for p in pairs])),
                        "fast": float(np.median([p[1] for p in pairs]))})
    return out


def deployment_parts(res: Any, s: Section) -> None:
    """Add the subsections "Unmerged fast path" (when measured), "Run order and drift" and
    "Serving under load" (with its saturation table and decision line) to the deployment
    section `s`."""
    store = res.ctx.store
    fast = fast_path_ratios(res.bench)
    for mode, ref in dict.fromkeys((x["mode"], x["reference"]) for x in fast):
        s.sub(f"{mode.capitalize()} fast path").add(Table(
            ["Task", "Method", "Batch", "Length", "Runs", f"Eager {mode} / {ref}",
             f"Fast path {mode} / {ref}"],
            [[x["task"], x["method"], str(x["batch_size"]), x["seq_len"], str(x["n"]),
              f.num(x["eager"], 3), f.num(x["fast"], 3)] for x in fast
             if (x["mode"], x["reference"]) == (mode, ref)],
            f"Median latency of the {mode} adapter, served eagerly by PEFT and on the fused "
            f"fast path (bench.fast_path), relative to the same adapter {ref}: the median over "
            "seeds of each seed's ratio (descriptive).",
            numeric=[False, False, True, False, True, True, True]))
    blocks = [b.dump() for b in read(store, BenchBlockRecord)]
    order_and_drift(blocks, s.sub("Run order and drift"))
    rows = [r.dump() for r in read(store, ServingRecord)]
    if not rows and res.spec.bench.serving is None:
        return  # not asked for (bench.serving unset): nothing to say
    load = s.sub("Serving under load")
    if not rows:
        load.add(Paragraph.of("Not measured: the study directory has no serving records "
                              "(filled by peftlab bench when bench.serving is set)."))
        return
    cfg = rows[0]["settings"]
    load.add(Paragraph.of(
        f"Open-loop Poisson load at rising rates against an in-process server with dynamic "
        f"batching (max batch {cfg['max_batch_size']}, max wait {cfg['max_wait_ms']:g} ms), "
        f"each run at most {cfg['max_requests']} requests within {cfg['max_seconds']:g} s; a "
        "configuration's sweep stops at the first rate it does not sustain (every request "
        "answered, achieved throughput >= 0.9 x the realised arrival rate, i.e. the requests "
        "offered over the arrival window, shown beside the nominal rate). Latency runs from the "
        "scheduled arrival to the answer; p99 is shown only where it rests on at least 100 "
        "requests. The configurations run interleaved at each rate."),
             Figure(latency_load_figure(rows), "Latency against offered load",
                    "p50 (solid) and p99 (dashed) latency per configuration against the "
                    "offered load, per adapter popularity pattern."))
    table = sorted(rows, key=lambda r: (PATTERNS.index(r["pattern"]) if r["pattern"] in PATTERNS
                                        else 9, config_order(r["config"]), r["offered_rate"]))
    load.add(Table(
        ["Pattern", "Configuration", "Offered (req/s)", "Realised arrival (req/s)",
         "Requests", "p50 (ms)", "p99 (ms)", "Achieved (req/s)", "Achieved / realised",
         "Sustained", "Mean batch", "Weights held"],
        [[r["pattern"], r["config"], f.rate(r["offered_rate"]),
          f.rate(r["row"].get("realised_arrival_rate")),
          f.integer(r["row"]["requests"]["offered"]),
          f.ms((r["row"].get("latency_ms") or {}).get("p50")),
          p99_cell(r["row"].get("latency_ms")), f.rate(r["row"].get("throughput_rps")),
          f.num(r["row"]["throughput_rps"] / r["row"]["realised_arrival_rate"], 2)
          if r["row"].get("realised_arrival_rate") and r["row"].get("throughput_rps")
          is not None else f.MISSING,
          "yes" if r["sustained"] else "no",
          f.num((r["row"].get("batches") or {}).get("size_mean"), 1),
          f.nbytes(r["row"]["memory"]["served_weight_bytes"])] for r in table],
        "Every load run (the serving table). Sustained: every request answered and achieved "
        ">= 0.9 x the realised arrival rate (the requests offered over the arrival window, "
        "which a short run's Poisson arrivals put above or below the nominal offered rate).",
        numeric=[False, False, True, True, True, True, True, True, True, False, True, True]))
    sat: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        sat[(r["config"], r["pattern"])] = r
    by_config: dict[str, list[str]] = defaultdict(list)
    for (config, pattern), r in sorted(sat.items(), key=lambda kv: (config_order(kv[0][0]),
                                                                   kv[0][1])):
        tried = max(x["offered_rate"] for x in rows if x["config"] == config
                    and x["pattern"] == pattern)
        by_config[config].append(
            f"{pattern} " + (f"{f.rate(r.get('saturation_throughput'))} req/s"
                             if r.get("saturation_rate") is not None else "no rate sustained")
            + (f" (sustained every rate up to {tried:g})"
               if r.get("saturation_rate") == tried else ""))
    load.add(Table(
        ["Configuration", "What it holds", "Saturation throughput per pattern"],
        [[c, config_label(c), "; ".join(v)] for c, v in by_config.items()],
        "Saturation: achieved throughput at the highest offered rate the configuration "
        "sustained."))
    line = serving_decision(res, rows)
    if line:
        load.add(Paragraph.of("What the load runs show: ", line))
