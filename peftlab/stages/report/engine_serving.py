"""The report's "Serving on <engine>" section: the multi-tenant scenarios run on a real engine.

Read from the `engine_serving` table (`bench.engines.scenarios.EngineServingRecord`, written by
the serve stage, or by `python -m peftlab.bench.engines STUDY`) and, beside it, peftlab's
in-process numbers where the study has them: the classification bench's `serving` table (its
dynamic-batching server), a generation study's per-token `gen_bench` blocks. One line says "not
applicable" when no engine ran.

The decision line compares like-for-like configurations (one adapter against the base alone;
m adapters on one server against m merged models; the mixed workload against k adapters) at
every rate and popularity both ran: one is called faster only where the 95% bootstrap intervals
of their TTFT medians do not overlap, and where the faster one changes as the rate rises, the
line says at which rate one overtakes the other. Saturation is bracketed by the rates tried
(highest sustained, first not sustained). A classification study's report gets the section
from `sections.py`; a generation study's Markdown report (`gen_study.report`) from
`markdown_lines`, which the report stage hands it.
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


def _verdict(ra: dict[str, Any], rb: dict[str, Any]) -> tuple[str, dict, dict] | None:
    """"a" / "b" (whose TTFT p50 is lower beyond both 95% intervals) or "=" (they overlap);
    None without intervals."""
    ca, cb = ra.get("ttft_ms") or {}, rb.get("ttft_ms") or {}
    ia, ib = ca.get("p50_ci"), cb.get("p50_ci")
    if not ia or not ib:
        return None
    return ("a" if ia[1] < ib[0] else "b" if ib[1] < ia[0] else "="), ca, cb


def _ci(name: str, c: dict[str, Any]) -> str:
    lo, hi = c["p50_ci"]
    return f"{name} {_ms(c['p50'])} [{_ms(lo)}, {_ms(hi)}]"


def _compare_at(ra: dict[str, Any], rb: dict[str, Any]) -> tuple[str, str, dict, dict] | None:
    """(winner "a" / "b" / "=", why: "ttft" or "capacity", a's TTFT, b's TTFT) at one rate, or
    None where nothing can be compared. Latency is compared only between two valid load runs
    (every request answered at the offered rate, enough of them): past saturation a run's TTFT
    grows with how long it ran and counts only the requests that finished, so two such runs'
    p50s are not comparable. Where exactly one run is valid, that configuration wins on
    capacity (it sustained the rate, the other did not); where neither is, nothing."""
    va, vb = bool(ra.get("valid")), bool(rb.get("valid"))
    if va and vb:
        v = _verdict(ra, rb)
        return None if v is None else (v[0], "ttft", v[1], v[2])
    if va != vb:
        return ("a" if va else "b"), "capacity", ra.get("ttft_ms") or {}, rb.get("ttft_ms") or {}
    return None


def crossover(recs: list[dict[str, Any]], a: str, b: str, pattern: str) -> str | None:
    """One pair under one popularity pattern: at which rates a or b is ahead and at which rate
    one overtakes the other; None without a common rate. Ahead: the lower TTFT p50 (95%
    intervals apart) where both load runs are valid, or the only valid run of the two (it
    sustained the rate: `_compare_at`). The rates are those both sweeps ran (a sweep stops at
    its first rate not sustained); rates where neither run is valid are named, not compared."""
    ra = {r["offered_rate"]: r["row"] for r in recs if r["config"] == a and r["pattern"] == pattern}
    rb = {r["offered_rate"]: r["row"] for r in recs if r["config"] == b and r["pattern"] == pattern}
    common = sorted(set(ra) & set(rb))
    if not common:
        return None
    who = {"a": a, "b": b}
    seq = []
    for rate in common:
        v = _compare_at(ra[rate], rb[rate])
        if v is not None:
            seq.append((rate, *v))
    past = [r for r in common if not ra[r].get("valid") and not rb[r].get("valid")]
    tail = (f"; at {_rates(past)} both are past saturation (no valid run: not compared)"
            if past else "")
    if not seq:
        return f"no rate compares them{tail}" if past else None

    def why(entry: tuple) -> str:
        rate, w, kind, ca, cb = entry
        if kind == "capacity":
            loser = who["b" if w == "a" else "a"]
            return (f"at {rate:g} req/s only {who[w]} sustains the rate, {loser} does not")
        return f"at {rate:g} req/s {_ci(a, ca)} vs {_ci(b, cb)} ms"

    decisive = [e for e in seq if e[1] != "="]
    rates = f"{seq[0][0]:g}-{seq[-1][0]:g} req/s" if len(seq) > 1 else f"{seq[0][0]:g} req/s"
    if not decisive:
        return f"no rate separates them ({rates}; {why(seq[-1])}){tail}"
    first, last = decisive[0][1], decisive[-1][1]
    if first != last:
        # the first rate from which the final leader stays ahead (no later rate of the other)
        i = max(j for j, e in enumerate(seq) if e[1] == first) + 1
        i = next(j for j in range(i, len(seq)) if seq[j][1] == last)
        before = [e[0] for e in decisive if e[1] == first]
        return (f"{who[first]} ahead at {_rates(before)}; {who[last]} overtakes {who[first]} "
                f"at {seq[i][0]:g} req/s ({why(seq[i])}){tail}")
    ties = [e[0] for e in seq if e[1] == "="]
    return (f"{who[first]} ahead at {_rates([e[0] for e in decisive])}"
            + (f", intervals overlap at {_rates(ties)}" if ties else
               " (every rate compared)")
            + f"; no overtaking ({why(decisive[-1])}){tail}")


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:g}" for r in rates) + " req/s"


def _pair_list(configs: set[str]) -> list[tuple[str, str]]:
    """The like-for-like pairs: one adapter against the base alone (an adapter's cost), m
    adapters on one server against m merged models (the deployment choice), the mixed
    workload against k adapters on one server (a full model beside the adapters)."""
    out = _pairs(configs)
    ks = sorted((int(c.split("-")[1]) for c in configs if c.startswith("adapters-")), reverse=True)
    if "mixed" in configs and ks:
        out.append(("mixed", f"adapters-{ks[0]}"))
    return out


def _bracket(recs: list[dict[str, Any]], config: str, pattern: str) -> str | None:
    """Saturation bracketed by the rates tried: "[s, u) req/s", "> s req/s", "< u req/s"."""
    rs = [r for r in recs if r["config"] == config and r["pattern"] == pattern]
    if not rs:
        return None
    r = rs[0]
    sat, broke = r.get("saturation_rate"), r.get("first_unsustained_rate")
    if broke is None:
        return f"sustained every rate tried (> {max(x['offered_rate'] for x in rs):g} req/s)"
    if sat is None:
        return f"none sustained (< {broke:g} req/s)"
    return f"saturates in [{sat:g}, {broke:g}) req/s"


def decision(recs: list[dict[str, Any]]) -> str | None:
    """Per like-for-like pair (`_pair_list`) and popularity pattern both ran: `crossover`, and
    each one's saturation bracket; None without such a pair."""
    parts = []
    for a, b in _pair_list({r["config"] for r in recs}):
        for pattern in PATTERN_ORDER:
            line = crossover(recs, a, b, pattern)
            if line is None:
                continue
            sat = [f"{c} {x}" for c in (a, b) if (x := _bracket(recs, c, pattern))]
            parts.append(f"{a} vs {b}, {pattern}: {line}; " + ", ".join(sat))
    if not parts:
        return None
    invalid = [r for r in recs if not r["row"].get("valid")]
    caveat = (f" {len(invalid)} of {len(recs)} load runs are invalid (too few requests or "
              "rate not sustained): they enter these comparisons only as the rate a "
              "configuration did not sustain." if invalid else "")
    return ("TTFT p50 with 95% bootstrap intervals over requests, one load run per rate (a "
            "configuration is ahead where both runs are valid and the intervals do not overlap, "
            "or where only its run is valid: it sustained the rate; runs past saturation are "
            "not compared on latency; saturation is bracketed by the rates tried): "
            + " | ".join(parts) + "." + caveat)


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


def _label(engine: str) -> str:
    from peftlab.bench.engines import ENGINE_CLASSES

    cls = ENGINE_CLASSES.get(engine)
    return cls.label if cls is not None else engine


def _operating_point(recs: list[dict[str, Any]], config: str, pattern: str
                     ) -> dict[str, Any] | None:
    """The load run at the highest rate sustained (else the lowest rate tried)."""
    rs = sorted((r for r in recs if r["config"] == config and r["pattern"] == pattern),
                key=lambda r: r["offered_rate"])
    if not rs:
        return None
    ok = [r for r in rs if r.get("sustained")]
    return ok[-1] if ok else rs[0]


def summary_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    """Per configuration and pattern: saturation bracket, and TTFT / TPOT p50 and p99 at the
    highest sustained rate (p99 only where it rests on >= 100 requests)."""
    rows = []
    seen = sorted({(r["config"], r["pattern"]) for r in recs},
                  key=lambda cp: (_order(cp[0]), PATTERN_ORDER.index(cp[1])
                                  if cp[1] in PATTERN_ORDER else 9))
    for config, pattern in seen:
        r = _operating_point(recs, config, pattern)
        assert r is not None
        row = r["row"]
        rows.append([config, pattern, _bracket(recs, config, pattern) or f.MISSING,
                     f"{r['offered_rate']:g}" + ("" if r.get("sustained") else " (not sustained)"),
                     _ms(_stat(row, "ttft_ms")), _p99(row.get("ttft_ms")),
                     _ms(_stat(row, "tpot_ms")), _p99(row.get("tpot_ms")),
                     f.rate(row.get("throughput_rps")), f.num(row.get("output_tokens_per_s"), 1)])
    return rows


def _inprocess_generation(res: Any, recs: list[dict[str, Any]]) -> Table | None:
    """A generation study's in-process per-token numbers (gen_bench: generate() at batch 1,
    no load) beside the engine's at its lowest rate, each also as a ratio to its base."""
    from peftlab.gen_study import GEN_BENCH, bench_summary

    blocks = [r for r in res.ctx.store.records(GEN_BENCH) if r.get("kind") == "block"]
    if not blocks:
        return None
    st = res.ctx.study.spec.stats
    modes = {m["mode"]: m for m in bench_summary(blocks, alpha=st.alpha,
                                                 margin=st.latency_margin)["modes"]
             if m["batch_size"] == 1}
    configs = sorted({r["config"] for r in recs}, key=_order)
    # the engine's "mixed" (adapters beside a fully fine-tuned model's server) has no
    # in-process counterpart: in-process "mixed" is mixed-adapter batches in one model, what
    # every adapters-k server of the engine does
    match = {"base": "base", "adapters-1": "unmerged"}
    ks = [c for c in configs if c.startswith("adapters-") and c != "adapters-1"]
    if ks:
        match[ks[-1]] = "multi"
    for c in configs:
        if c.startswith("merged-"):
            match[c] = "merged"
    low = {}
    for c in configs:
        rs = sorted((r for r in recs if r["config"] == c), key=lambda r: (
            r["offered_rate"], PATTERN_ORDER.index(r["pattern"])))
        low[c] = rs[0]
    eb = low.get("base")
    ib = modes.get("base")
    rows = []
    for c in configs:
        mode = match.get(c)
        e, i = low[c]["row"], modes.get(mode) if mode else None
        if i is None:
            continue
        et, ep = _stat(e, "ttft_ms"), _stat(e, "tpot_ms")
        rows.append([c, f"{low[c]['offered_rate']:g} ({low[c]['pattern']})", _ms(et),
                     f.num(ep, 1),
                     _ratio(et, _stat(eb["row"], "ttft_ms") if eb else None),
                     _ratio(ep, _stat(eb["row"], "tpot_ms") if eb else None),
                     mode, _ms(i["ttft_ms"]), f.num(i["tpot_ms"], 1),
                     _ratio(i["ttft_ms"], ib["ttft_ms"] if ib else None),
                     _ratio(i["tpot_ms"], ib["tpot_ms"] if ib else None)])
    if not rows:
        return None
    return Table(["Engine configuration", "Rate (req/s)", "TTFT p50 (ms)", "TPOT p50 (ms)",
                  "TTFT / base", "TPOT / base", "In-process mode", "TTFT (ms)", "TPOT (ms)",
                  "TTFT / base", "TPOT / base"], rows,
                 "Beside it, peftlab's in-process generate() for the same adapters (section "
                 "Deployment cost of generation: batch 1, no load, medians over its blocks): "
                 "each also as a ratio to its own base model, so the orderings compare "
                 "though the units of work differ (the engine: one request at the lowest "
                 "offered rate, its prompt and output lengths from the data; in-process: "
                 "fixed new tokens). multi: 2 adapters in one process; the engine's largest "
                 "adapter count is its match. merged-m: m servers sharing the machine's "
                 "cores, against one merged model in process (one merged model alone on the "
                 "engine costs what the base does: the same architecture and weights).",
                 numeric=[False, True, True, True, True, True, False, True, True, True, True])


def _ratio(x: float | None, base: float | None) -> str:
    return f.num(x / base, 2) if x is not None and base else f.MISSING


def engine_serving(res: Any) -> Section:
    recs = [r.dump() for r in read(res.ctx.store, EngineServingRecord)]
    if not recs:
        s = Section("Serving on an engine", "engine-serving")
        return s.add(Paragraph.of(Strong("Not applicable:"), " no engine ran (the spec's "
                                  "engine: block, the serve stage)."))
    engine = recs[0]["engine"]
    s = Section(f"Serving on {_label(engine)}", "engine-serving")
    first = recs[0]
    st, env = first["settings"], first["environment"]
    loads = [x for r in recs for x in (r["row"].get("load_average") or {}).get("before", [])[:1]]
    done = sum(r["row"]["requests"]["done"] for r in recs)
    tokens = sum(r["row"].get("output_tokens") or 0 for r in recs)
    per_prompt = first["row"].get("max_tokens") == "per prompt"
    sources = {n: src for r in recs if r["config"].startswith("adapters-")
               for n, src in (r.get("sources") or {}).items()}
    copies = sorted(n for n, src in sources.items() if n != src)
    memory = {r["config"]: r.get("memory_gib") for r in recs if r.get("memory_gib")}
    mem_line = "; ".join(f"{c} " + ", ".join(f.num(x, 1) for x in m) for c, m in
                         sorted(memory.items(), key=lambda kv: _order(kv[0])) if any(m))
    s.add(Paragraph.of(
        f"{_label(engine)} ({first.get('engine_version') or 'version unknown'}) on "
        f"{env.get('cpus')} CPUs ({env.get('processor')}, {env.get('platform')}); dtype "
        f"{st.get('dtype')}, max {st.get('max_num_seqs')} sequences per batch, KV cache "
        f"{st.get('kv_cache_gib', '?')} GiB per server, eager mode. Each request: one prompt "
        "from the task's evaluation inputs, "
        + (f"as many output tokens as a reference of that input has (the task's own output "
           f"lengths, {f.num(tokens / done if done else None, 1)} on average; greedy, "
           "end-of-sequence ignored)" if per_prompt else
           f"{first['row'].get('max_tokens')} output tokens (greedy, end-of-sequence ignored)")
        + ", streamed. Open-loop Poisson arrivals, at most "
        f"{st.get('max_requests')} requests within {st.get('max_seconds'):g} s per rate, the "
        "same arrival times and popularity draws for every configuration; a sweep stops at the "
        "first rate not sustained. Latencies run from the scheduled arrival: TTFT to the first "
        "streamed output, time per output token (TPOT) between first and last, inter-token "
        "latency (ITL) between streamed outputs. Goodput: requests per second meeting TTFT <= "
        f"{st.get('slo_ttft_ms'):g} ms and TPOT <= {st.get('slo_tpot_ms'):g} ms. A load run is "
        f"valid with >= {st.get('min_requests')} completed requests and the rate sustained; p99 "
        "is shown only on >= 100 requests. "
        + (f"{len(copies)} of the {len(sources)} adapter names are copies of the study's "
           f"{len(set(sources.values()))} trained adapters under distinct names (the engine loads each as its own adapter: "
           "the serving cost of distinct adapters of that rank, not their different outputs). "
           if copies else "")
        + "Merged models: one server each, sharing the machine's cores"
        + (f"; memory per server (GiB, proportional set size): {mem_line}. " if mem_line
           else ". ")
        + "Configurations ran one after another, not interleaved. Load average (1 min) at the "
        "start of the load runs: "
        + (f"{min(loads):.1f}-{max(loads):.1f} (it counts the running servers' own engine "
           "processes: several servers side by side raise it without any other job; the "
           "column Load avg of every load run shows where)" if loads else "not recorded")
        + "."))
    line = decision(recs)
    s.add(Paragraph.of(Strong("What the engine runs show:"), " " + (line or
                       "no like-for-like pair of configurations ran at a common rate and "
                       "pattern, so none is compared.")))
    s.add(Table(["Configuration", "Pattern", "Saturation", "At (req/s)", "TTFT p50 (ms)",
                 "TTFT p99 (ms)", "TPOT p50 (ms)", "TPOT p99 (ms)", "Req/s", "Output tok/s"],
                summary_rows(recs),
                "Per configuration and popularity: the saturation bracket, and latency at the "
                "highest rate sustained (the lowest tried where none was).",
                numeric=[False, False, False, True, True, True, True, True, True, True]))
    s.add(Figure(latency_figure(recs), f"Latency against offered load on {_label(engine)}",
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
    gen = _inprocess_generation(res, recs) if hasattr(res.ctx, "study") else None
    if gen is not None:
        s.add(gen)
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
    return s


def markdown_lines(ctx: Any, figure_dir: str = "figures") -> list[str]:
    """The section as Markdown lines for a generation study's report (`gen_study.report`),
    its figure written as a PNG beside report.md (`<study>/figures/engine-serving-<n>.png`);
    [] when no engine ran."""
    from types import SimpleNamespace

    from peftlab.stages.report.document import section_markdown

    if not read(ctx.store, EngineServingRecord):
        return []
    s = engine_serving(SimpleNamespace(ctx=ctx))
    figs = [b for b in s.blocks if isinstance(b, Figure)]
    if figs:
        ctx.store.path(figure_dir).mkdir(parents=True, exist_ok=True)
    for i, fig in enumerate(figs, 1):
        fig.number = i
        fig.file = f"{figure_dir}/engine-serving-{i}.png"
        ctx.store.path(fig.file).write_bytes(fig.png)
    return section_markdown(s, level=2).splitlines() + [""]
