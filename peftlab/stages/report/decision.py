"""The Deployment decision section: each way of serving each task's trained model at each sweep
point with what the tested comparisons between them support (no ranking from untested
differences), the cost of several adapters on one base (marked where it is not like for like),
adapter switching, serving under load, and the storage every task takes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.bench.modes import MODES, find_mode, get_mode, mode_names
from peftlab.results import seq_sort_key
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import serving as serving_report
from peftlab.stages.report.deployment import bench_sort, tasks_of
from peftlab.stages.report.document import Paragraph, Section, Table
from peftlab.stages.report.stored import Results, not_measured


def served(x: dict[str, Any]) -> str:
    """How a latency summary's model was served: 'lora merged', or the method alone ('full')
    when its mode is the only registered way to serve its kind of artifact."""
    mode = find_mode(x["mode"])
    alone = mode is not None and sum(m.artifact_kind == mode.artifact_kind
                                     for m in MODES.values()) == 1
    return x["method"] if alone else f"{x['method']} {x['mode']}"


def _calls(counts: dict[str, int] | None) -> str:
    """'3-5 per seed (few)' from {seed: timed calls}; flags fewer than FEW_CALLS."""
    if not counts:
        return f.MISSING
    lo, hi = min(counts.values()), max(counts.values())
    span = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"{span} per seed" + (f" (few: < {fnd.FEW_CALLS})" if lo < fnd.FEW_CALLS else "")


def supported(c: dict[str, Any]) -> str:
    """What one stored comparison supports, in words that claim only what it tested."""
    a, b = fnd.name(c, "a"), fnd.name(c, "b")
    if c["outcome"] == "different":
        rel = fnd.relative_text(c)
        return (f"{fnd.direction(c)} ({rel or fnd.estimate_cell(c)}; tested, corrected p "
                f"{f.p_eq(c.get('p_adjusted'))})")
    if c["outcome"] in ("equivalent", "negligible"):
        return f"{a} and {b} {c['outcome']} within {fnd.margin_text(c)} (tested)"
    if c["outcome"] == "inconclusive":
        return f"{a} vs {b}: no difference shown either way (tested, inconclusive)"
    return f"{a} vs {b}: not tested ({c['outcome']})"


def decision(res: Results) -> Section:
    s = Section("Deployment decision", "decision")
    # trained models served one at a time (modes with an artifact, one per unit)
    single = {m for m in mode_names() if get_mode(m).max_artifacts == 1}
    lat = [x for x in res.summaries_of("latency") if x["mode"] in single]
    if not lat:
        return s.add(not_measured("latency summaries", "bench", "stats"))
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for x in lat:
        groups[(x["task"], x["batch_size"], str(x["seq_len"]))].append(x)
    order = {t: i for i, t in enumerate(res.view.tasks)}
    modes = mode_names()
    rows = []
    for (task, batch, seq), xs in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 99), kv[0][1], seq_sort_key(kv[0][2]))):
        # in the modes' declared order: the table ranks nothing the tests did not
        xs = sorted(xs, key=lambda x: (modes.index(x["mode"]) if x["mode"] in modes
                                       else len(modes), str(x["method"])))
        comps = [c for c in res.comparisons_of("latency") if c["task"] == task
                 and c["batch_size"] == batch and str(c["seq_len"]) == seq]
        tested = [c for c in comps if c["outcome"] in fnd.TESTED]
        differ = [c for c in tested if c["outcome"] == "different"]
        if tested:
            verdict = "; ".join(supported(c) for c in tested)
        else:
            untested = sorted({c["outcome"] for c in comps})
            why = ": they rest on runs that did not learn" if "void" in untested else ""
            verdict = ("no comparison tested" +
                       (f" ({', '.join(untested)}{why})" if untested else ""))
        if not differ:
            verdict += ("; no tested difference between these ways of serving: the means are "
                        "numbers, not a ranking")
        paired = [c for c in comps if c.get("design") == "paired"]
        rows.append([task, str(batch), seq,
                     "; ".join(f"{served(x)} {f.ms(x['mean'])} (n = {x['n']})" for x in xs),
                     "; ".join(f"{fnd.name(c, 'a')} {f.ms(c.get('mean_a'))} vs "
                               f"{fnd.name(c, 'b')} {f.ms(c.get('mean_b'))} "
                               f"({c['n']} blocks)" for c in paired) or f.MISSING,
                     verdict])
    s.add(Paragraph.of(
        "Each task's trained model, served each way the bench ran, at each sweep point, in the "
        "modes' own order. Single units: the mean over seeds of each run's median latency, "
        "each mode timed in its own process (descriptive: machine drift between processes is "
        "part of these differences). Paired: the primary comparisons, both models in one "
        "process on the same requests in ABBA rounds, repeated in fresh-process blocks (the "
        "mean over blocks of each block's latency; the numbers the tests use). What the tested "
        "comparisons support is the last column; a difference no comparison tested is a number here, not a "
        "reason to prefer one way; 'inconclusive' or 'equivalent': either choice is defensible "
        "on latency."),
          Table(["Task", "Batch", "Length", "Single units (ms), per way of serving",
                 "Paired (ms)", "What the tested comparisons support"], rows,
                numeric=[False, True, False, False, False, False]))
    serving = res.comparisons_of("serving")
    if serving:
        s.add(Table(["Task (served group)", "Batch", "Length", "Mode",
                     "Mean of run medians (ms)", "Single adapter (ms)", "Like for like",
                     "Timed calls of the task", "Cost", "CI", "Outcome"],
                    [[f"{c['task']} ({c.get('served', c['task'])})", str(c["batch_size"]),
                      str(c["seq_len"]),
                      f"{c['mode_a']}-{c['k']} ({c['method_a']})", f.ms(c.get("mean_a")),
                      f"{f.ms(c.get('mean_b'))} ({fnd.name(c, 'b')})",
                      "yes: the same batches" if c.get("like_for_like", c.get("length_matched"))
                      else f"no: {c.get('like_for_like_reason') or 'not the same batches'}",
                      _calls(c.get("calls_a")),
                      fnd.relative_text(c, with_interval=False) or f.MISSING,
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct)
                      if fnd.relative_shown(c) else f.MISSING,
                      fnd.outcome_cell(c)] for c in serving],
                    "What serving several adapters on one base costs per timed call, per task: "
                    "that task's calls in the shared stream against its single adapter (means "
                    "over seeds of per-run medians). Like for like only where the single "
                    "adapter's calls are the same prebuilt batches; a mixed batch holds rows of "
                    f"every served task, so it is not. Medians resting on fewer than "
                    f"{fnd.FEW_CALLS} "
                    "timed calls per seed are flagged.",
                    numeric=[False, True, False, False, True, True, False, False, True, True,
                             False]))
    switching = [r for r in res.bench if r["ok"] and "switches" in r["extras"]]
    if switching:
        s.add(Table(["Served tasks", "Method", "Seed", "Batch", "Length", "Timed calls",
                     "Switched", "Median with switch (ms)", "Median without switch (ms)"],
                    [[tasks_of(r), f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
                      str(r["seq_len"]), f.integer(r["latency"].get("count")),
                      f.share(r["extras"].get("switch_share")),
                      f.ms(r["extras"].get("p50_ms_with_switch")),
                      f.ms(r["extras"].get("p50_ms_without_switch"))]
                     for r in sorted(switching, key=lambda r: bench_sort(r, res.view.tasks))],
                    "Adapter switching inside the timed stream (multi): calls that had to "
                    "switch the active adapter against those that did not (descriptive, not "
                    "tested: the calls of one run are not independent).",
                    numeric=[False, False, True, True, False, True, True, True, True]))
    line = serving_report.serving_decision(res)
    if line:
        s.add(Paragraph.of("Serving under load: ", line))
    sizes = defaultdict(list)
    for rec in res.view.records.values():
        if rec.get("status") == "done" and rec.get("artifact_bytes") is not None:
            sizes[rec["method"]].append(rec["artifact_bytes"])
    if sizes:
        k = len(res.view.tasks)
        s.add(Table(["Method", "Mean artifact", f"{k} task(s) on disk"],
                    [[m, f.nbytes(np.mean(b)), f.nbytes(k * np.mean(b))]
                     for m, b in sizes.items()],
                    "Storage to serve every task of the study (PEFT adapters share one base, "
                    "which is not counted here; full fine-tuning stores one model per task).",
                    numeric=[False, True, True]))
    return s
