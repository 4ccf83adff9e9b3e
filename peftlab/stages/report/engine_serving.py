"""The report's "Serving on <engine>" section: the multi-tenant scenarios run on a real engine.

Read from the `engine_serving` table (`bench.engines.scenarios.EngineServingRecord`, written by
`python -m peftlab.bench.engines STUDY`) and, beside it, the in-process `serving` table (the bench
stage's dynamic-batching server) where the study has one. One line says "not applicable" when no
engine ran. The decision line compares like-for-like configurations (one adapter against the
base alone; m adapters on one server against m merged models) only where both ran at the same
rate and pattern, and calls one faster only where the 95% bootstrap intervals of their TTFT
medians do not overlap.
"""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import NullFormatter, ScalarFormatter

from peftlab.bench.engines.scenarios import EngineServingRecord
from peftlab.records import ServingRecord, read
from peftlab.stages.report import figures as figs
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Paragraph, Section, Strong, Table
from peftlab.stages.report.serving import p99_cell

PATTERN_ORDER = ("identical", "uniform", "skewed")


def _order(config: str) -> tuple[int, int]:
    kind, _, n = config.partition("-")
    rank = {"base": 0, "adapters": 1, "merged": 2, "mixed": 3}.get(kind, 4)
    return rank, int(n) if n.isdigit() else 0


def _ms(x: Any) -> str:
    """Engine latencies are tens to thousands of ms: whole milliseconds."""
    return f.num(x, 0)


def _p99(lat: dict[str, Any] | None) -> str:
    """p99 with its interval where it rests on >= 100 requests, else the note (`p99_cell`)."""
    if lat and lat.get("p99_reliable") and lat.get("p99_ci"):
        lo, hi = lat["p99_ci"]
        return f"{_ms(lat['p99'])} [{_ms(lo)}, {_ms(hi)}]"
    return p99_cell(lat)


def _stat(row: dict[str, Any], metric: str, q: str = "p50") -> float | None:
    return (row.get(metric) or {}).get(q)


def latency_figure(recs: list[dict[str, Any]]) -> bytes:
    """TTFT p50 (top) and time per output token p50 (bottom) against the offered rate, one
    line per configuration, one column per popularity pattern."""
    patterns = [p for p in PATTERN_ORDER if any(r["pattern"] == p for r in recs)]
    configs = sorted({r["config"] for r in recs}, key=_order)
    fig = figs.new_figure(max(4.2, 3.4 * len(patterns)), 6.0)
    axes = fig.subplots(2, len(patterns), squeeze=False)
    for col, pattern in enumerate(patterns):
        for row_i, (metric, label) in enumerate((("ttft_ms", "TTFT p50 (ms)"),
                                                 ("tpot_ms", "time per output token p50 (ms)"))):
            ax = axes[row_i][col]
            for config in configs:
                pts = sorted((r["offered_rate"], _stat(r["row"], metric)) for r in recs
                             if r["pattern"] == pattern and r["config"] == config)
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", ms=4, label=config,
                            color=figs.color(configs, config))
            ax.set_xscale("log", base=2)  # the sweeps double the rate
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            figs.style_axes(ax, f"popularity: {pattern}" if row_i == 0 else "",
                            "offered load (requests/s)", label)
    return figs.to_png(fig)


def _pairs(configs: set[str]) -> list[tuple[str, str]]:
    """The like-for-like pairs: one adapter against the base alone (the adapter's cost), and
    m adapters on one server against m merged models (the deployment choice)."""
    out = [("adapters-1", "base")] if {"adapters-1", "base"} <= configs else []
    for mc in sorted(c for c in configs if c.startswith("merged-")):
        ac = "adapters-" + mc.split("-")[1]
        if ac in configs:
            out.append((ac, mc))
    return out


def decision(recs: list[dict[str, Any]]) -> str | None:
    """Per like-for-like pair (`_pairs`), pattern and rate both ran: which one's TTFT p50 is
    lower beyond both 95% intervals, or that the intervals overlap; None without such a pair."""
    parts = []
    for ac, mc in _pairs({r["config"] for r in recs}):
        for pattern in PATTERN_ORDER:
            a = {r["offered_rate"]: r["row"] for r in recs
                 if r["config"] == ac and r["pattern"] == pattern}
            m = {r["offered_rate"]: r["row"] for r in recs
                 if r["config"] == mc and r["pattern"] == pattern}
            said = []
            for rate in sorted(set(a) & set(m)):
                ca, cm = (a[rate].get("ttft_ms") or {}), (m[rate].get("ttft_ms") or {})
                ia, im = ca.get("p50_ci"), cm.get("p50_ci")
                if not ia or not im:
                    continue
                if ia[1] < im[0]:
                    who = f"{ac} faster"
                elif im[1] < ia[0]:
                    who = f"{mc} faster"
                else:
                    who = "intervals overlap"
                said.append(f"{rate:g} req/s {who} ({ac} {_ms(ca['p50'])} "
                            f"[{_ms(ia[0])}, {_ms(ia[1])}] vs {mc} {_ms(cm['p50'])} "
                            f"[{_ms(im[0])}, {_ms(im[1])}] ms)")
            if said:
                parts.append(f"{ac} vs {mc}, {pattern}: " + "; ".join(said))
    if not parts:
        return None
    invalid = [r for r in recs if not r["row"].get("valid")]
    caveat = (f" {len(invalid)} of {len(recs)} load runs are marked invalid (too few requests "
              "or rate not sustained): read those comparisons as indicative." if invalid else "")
    return ("TTFT p50 with 95% bootstrap intervals over requests, one load run per rate (a "
            "configuration is called faster only where the intervals do not overlap): "
            + " | ".join(parts) + "." + caveat + " Saturation (highest rate sustained, "
            "descriptive): " + "; ".join(_saturation_words(recs)) + ".")


def _saturation_words(recs: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in _saturation(recs):
        out.append(f"{row[0]} {row[1]} {row[4]}" + (" req/s" if row[4][0].isdigit() else ""))
    return out


def _saturation(recs: list[dict[str, Any]]) -> list[list[str]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in recs:
        seen[(r["config"], r["pattern"])] = r
    rows = []
    for (config, pattern), r in sorted(seen.items(), key=lambda kv: (_order(kv[0][0]),
                                                                     kv[0][1])):
        tried = max(x["offered_rate"] for x in recs if x["config"] == config
                    and x["pattern"] == pattern)
        sat = r.get("saturation_rate")
        rows.append([config, pattern, str(r["servers"]), r["note"],
                     f"{sat:g}" if sat is not None else "none sustained",
                     f.rate(r.get("saturation_throughput")),
                     "not reached" if r.get("first_unsustained_rate") is None
                     else f"{r['first_unsustained_rate']:g}", f"{tried:g}"])
    return rows


def engine_serving(res: Any) -> Section:
    recs = [r.dump() for r in read(res.ctx.store, EngineServingRecord)]
    engine = recs[0]["engine"] if recs else "an engine"
    s = Section(f"Serving on {engine if recs else 'an engine'}"
                if recs else "Serving on an engine", "engine-serving")
    if not recs:
        return s.add(Paragraph.of(Strong("Not applicable:"), " no engine ran (bench.serving."
                                  "engine, run by python -m peftlab.bench.engines STUDY)."))
    first = recs[0]
    st, env = first["settings"], first["environment"]
    loads = [x for r in recs for x in (r["row"].get("load_average") or {}).get("before", [])[:1]]
    s.add(Paragraph.of(
        f"{engine} ({first.get('engine_version') or 'version unknown'}) on {env.get('cpus')} "
        f"CPUs ({env.get('processor')}, {env.get('platform')}); dtype {st.get('dtype')}, "
        f"max {st.get('max_num_seqs')} sequences per batch, eager mode. Each request: one "
        f"prompt from the task's evaluation texts, {first['row'].get('max_tokens')} output "
        "tokens (greedy, end-of-sequence ignored), streamed. Open-loop Poisson arrivals, at most "
        f"{st.get('max_requests')} requests within {st.get('max_seconds'):g} s per rate; a sweep "
        "stops at the first rate not sustained. Latencies run from the scheduled arrival: TTFT "
        "to the first streamed output, time per output token (TPOT) between first and last, "
        "inter-token latency (ITL) between streamed outputs. Goodput: requests per second "
        f"meeting TTFT <= {st.get('slo_ttft_ms'):g} ms and TPOT <= {st.get('slo_tpot_ms'):g} "
        f"ms. A load run is valid with >= {st.get('min_requests')} completed requests and the "
        "rate sustained; p99 is shown only on >= 100 requests. Configurations ran one after "
        "another, not interleaved, on a machine shared with other jobs: load average (1 min) "
        + (f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded")
        + " at the start of the load runs."))
    s.add(Figure(latency_figure(recs), f"Latency against offered load on {engine}",
                 "TTFT p50 (top) and time per output token p50 (bottom) per configuration "
                 "against the offered load, per adapter popularity pattern."))
    table = sorted(recs, key=lambda r: (PATTERN_ORDER.index(r["pattern"]), _order(r["config"]),
                                        r["offered_rate"]))
    s.add(Table(
        ["Pattern", "Configuration", "Offered (req/s)", "Realised", "Done / offered",
         "TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "TPOT p99 (ms)", "ITL p50 (ms)",
         "E2E p50 (ms)", "Req/s", "Output tok/s", "Goodput (req/s)", "Valid", "Load avg"],
        [[r["pattern"], r["config"], f"{r['offered_rate']:g}",
          f.rate(r["row"].get("realised_arrival_rate")),
          f"{r['row']['requests']['done']} / {r['row']['requests']['offered']}",
          _ms(_stat(r["row"], "ttft_ms")), _p99(r["row"].get("ttft_ms")),
          _ms(_stat(r["row"], "tpot_ms")), _p99(r["row"].get("tpot_ms")),
          _ms(_stat(r["row"], "itl_ms")), _ms(_stat(r["row"], "e2e_ms")),
          f.rate(r["row"].get("throughput_rps")), f.num(r["row"].get("output_tokens_per_s"), 1),
          f.rate(r["row"].get("goodput_rps")),
          "yes" if r["row"].get("valid") else "no: " + "; ".join(
              r["row"].get("invalid_because") or []),
          f.num(((r["row"].get("load_average") or {}).get("before") or [None])[0], 1)]
         for r in table],
        "Every load run (the engine_serving table).",
        numeric=[False, False, True, True, False, True, True, True, True, True, True, True,
                 True, True, False, True]))
    s.add(Table(["Configuration", "Pattern", "Servers", "What it holds", "Saturation (req/s)",
                 "Achieved there (req/s)", "First rate not sustained", "Highest rate tried"],
                _saturation(recs),
                "Saturation: the highest offered rate sustained (every request answered, "
                "achieved >= 0.9 x the realised arrival rate), one load run per rate."))
    inproc = [r.dump() for r in read(res.ctx.store, ServingRecord)]
    if inproc:
        sat = {}
        for r in inproc:
            sat[(r["config"], r["pattern"])] = r.get("saturation_throughput")
        s.add(Table(["In-process configuration", "Pattern", "Saturation throughput (req/s)"],
                    [[c, p, f.rate(v)] for (c, p), v in sorted(sat.items())],
                    "Beside it, peftlab's in-process server (one classification forward per "
                    "request, no generation; section Deployment): the same adapters, a "
                    "different unit of work, so compare orderings, not numbers."))
    line = decision(recs)
    s.add(Paragraph.of(Strong("What the engine runs show:"), " " + (line or
                       "no like-for-like pair of configurations ran at a common rate and "
                       "pattern, so none is compared.")))
    return s
