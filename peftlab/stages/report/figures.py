"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so no global state, no
display and no backend switch is involved, and each figure is freed as soon as it is saved. PNG
metadata carries no software version or date, so the same results give the same bytes.

Every function takes rows already read from the results tables and draws them; nothing here
computes a statistic the report prints.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator, NullLocator

DPI = 110
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def color(names: list[str], name: str) -> str:
    """A stable colour per name (its position in `names`)."""
    return PALETTE[names.index(name) % len(PALETTE)] if name in names else PALETTE[-1]


def new_figure(width: float, height: float):
    """A standalone figure (no pyplot) with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def style_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    """The report's panel style: a small title, both axis labels, a light grid, a frameless
    legend."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)


def to_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is cleared afterwards (its memory is released)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        fig.clear()
    return buf.getvalue()


def _panels(fig, n: int):
    axes = fig.subplots(1, n, squeeze=False)[0]
    return list(axes)


# ----------------------------------------------------------------------------- answers


def _hbar(ax, y: float, mid: float | None, lo: float | None, hi: float | None, c: str,
          marker: str = "o", filled: bool = True, size: float = 5.5) -> None:
    """One estimate as a marker at `mid` on row `y` with its interval (a line) when defined."""
    if mid is None:
        return
    if lo is not None and hi is not None:
        ax.plot([lo, hi], [y, y], color=c, lw=1.6, solid_capstyle="butt", zorder=3)
    ax.plot([mid], [y], marker=marker, color=c, ms=size, zorder=4,
            markerfacecolor=c if filled else "white")


def forest_figure(rows: list[dict[str, Any]], across: list[dict[str, Any]], methods: list[str],
                  unit: str) -> bytes:
    """RQ1: per task, the similarity to the base of each method (left) and PEFT minus full
    (right), with intervals; the across-task estimate as a diamond on its own row.

    rows: per task {task, a, b (method names), a_mean/a_lo/a_hi, b_mean/b_lo/b_hi (t-interval
    over seeds), diff/diff_lo/diff_hi (the paired comparison's interval), floor (null q95),
    s2s_lo/s2s_hi (seed-to-seed interval over both methods), note (text for a row without an
    estimate, e.g. "void")}; across: {label, diff, lo, hi, note}. Reference lines: the null
    floor (dotted) and the seed-to-seed band (shaded) on the left, 0 on the right.
    """
    fig = new_figure(6.3, 2.75)
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.15]})
    labels = [r["task"] for r in rows] + [a["label"] for a in across]
    ys = list(range(len(labels)))[::-1]
    for r, y in zip(rows, ys, strict=False):
        if r.get("s2s_lo") is not None and r.get("s2s_hi") is not None:
            left.fill_betweenx([y - 0.38, y + 0.38], r["s2s_lo"], r["s2s_hi"], color="#8c959f",
                               alpha=0.25, lw=0, zorder=1)
        if r.get("floor") is not None:
            left.plot([r["floor"]] * 2, [y - 0.38, y + 0.38], ls=":", color="#57606a", lw=1.3,
                      zorder=2)
        for k, side in enumerate(("a", "b")):
            _hbar(left, y + (0.13 if k == 0 else -0.13), r.get(f"{side}_mean"),
                  r.get(f"{side}_lo"), r.get(f"{side}_hi"), color(methods, r[side]))
        if r.get("diff") is not None:
            _hbar(right, y, r["diff"], r.get("diff_lo"), r.get("diff_hi"), "#24292f",
                  filled=r.get("tested", True))
        if r.get("note"):
            right.annotate(r["note"], (0.03, y), xycoords=("axes fraction", "data"),
                           va="center", fontsize=7.5, color="#57606a")
    for a, y in zip(across, ys[len(rows):], strict=True):
        if a.get("diff") is not None:
            _hbar(right, y, a["diff"], a.get("lo"), a.get("hi"), "#0969da", marker="D",
                  size=7, filled=a.get("tested", True))
        if a.get("note"):
            right.annotate(a["note"], (0.03, y), xycoords=("axes fraction", "data"),
                           va="center", fontsize=7.5, color="#57606a")
    right.axvline(0, color="#57606a", lw=0.9)
    if across and rows:
        for ax in (left, right):
            ax.axhline(len(across) - 0.5, color="#d0d7de", lw=0.8)
    left.set_yticks(ys, labels)
    left.set_ylim(-0.6, len(labels) - 0.4)
    _zoom_to_data(left, rows, ys)
    for m in methods:
        left.plot([], [], "o", color=color(methods, m), label=m)
    left.plot([], [], ls=":", color="#57606a", label="null floor (q95)")
    left.fill_between([], [], [], color="#8c959f", alpha=0.25, label="seed-to-seed")
    left.legend(fontsize=6.5, frameon=False, loc="best")
    left.set_xlabel(f"{unit} to the base", fontsize=8)
    right.set_xlabel("PEFT minus full (interval)", fontsize=8)
    for ax in (left, right):
        ax.tick_params(labelsize=7.5)
        ax.grid(axis="x", alpha=0.3)
    return to_png(fig)


def _zoom_to_data(ax, rows: list[dict[str, Any]], ys: list[int]) -> None:
    """Zoom the forest plot's left panel to the methods' estimates, intervals and seed-to-seed
    bands, so a difference of 0.01 between two values near 1 is not hidden by an axis from 0
    to 1. A null floor far below the data is not drawn at its place but marked at the panel's
    edge with its value (an arrow and the number); one close to the data stays on the axis."""
    keys = ("a_mean", "a_lo", "a_hi", "b_mean", "b_lo", "b_hi", "s2s_lo", "s2s_hi")
    vals = [r[k] for r in rows for k in keys if r.get(k) is not None]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = max(0.12 * (hi - lo), 1e-3)
    floors = [(r["floor"], y) for r, y in zip(rows, ys, strict=False)
              if r.get("floor") is not None]
    near = [x for x, _ in floors if lo - 2 * (hi - lo) - pad <= x <= hi + pad]
    lo_all = min([lo, *near])
    hi_all = max([hi, *near])
    ax.set_xlim(lo_all - pad, hi_all + pad)
    for x, y in floors:
        if x < lo_all - pad:
            ax.annotate(f"\u25c2 null floor {x:.3f}", (0.01, y - 0.3),
                        xycoords=("axes fraction", "data"), fontsize=6.5, color="#57606a")
        elif x > hi_all + pad:
            ax.annotate(f"null floor {x:.3f} \u25b8", (0.99, y - 0.3), ha="right",
                        xycoords=("axes fraction", "data"), fontsize=6.5, color="#57606a")


def ratio_figure(rows: list[dict[str, Any]], margin: float | None) -> bytes:
    """RQ2: latency ratios with intervals, one row per task and batch size, one colour per
    comparison (unmerged/merged, merged/full); a hollow marker is a ratio of medians that was
    not tested (no interval). A short dashed tick per row marks the compute-only floor
    (1 + the adapter's share of the FLOPs) and the shaded band the equivalence margin.

    rows: {label, series, ratio, lo, hi, tested, floor}.
    """
    series = list(dict.fromkeys(r["series"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = new_figure(6.3, max(2.0, min(2.75, 0.9 + 0.26 * len(labels))))
    ax = fig.subplots()
    ys = {lab: i for i, lab in enumerate(labels[::-1])}
    if margin is not None:
        ax.axvspan(1 - margin, 1 + margin, color="#2ca02c", alpha=0.12, lw=0,
                   label=f"\u00b1{100 * margin:.0f}% margin")
    ax.axvline(1.0, color="#57606a", lw=0.9)
    offsets = {s: (i - (len(series) - 1) / 2) * 0.22 for i, s in enumerate(series)}
    floor_drawn = False
    for r in rows:
        y = ys[r["label"]] + offsets[r["series"]]
        c = PALETTE[series.index(r["series"]) % len(PALETTE)]
        _hbar(ax, y, r["ratio"], r.get("lo"), r.get("hi"), c, filled=r.get("tested", True))
        if r.get("floor") is not None:
            ax.plot([r["floor"]] * 2, [y - 0.12, y + 0.12], color="#24292f", lw=1.6,
                    label=None if floor_drawn else "compute-only floor")
            floor_drawn = True
    for i, s in enumerate(series):
        ax.plot([], [], "o", color=PALETTE[i % len(PALETTE)], label=s)
    if any(not r.get("tested", True) for r in rows):
        ax.plot([], [], "o", color="#57606a", markerfacecolor="white",
                label="not tested (no interval)")
    ax.set_yticks(list(ys.values()), list(ys))
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("latency ratio (median per run; 1 = same speed)", fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=6.5, frameon=False, loc="best")
    return to_png(fig)


# ----------------------------------------------------------------------------- accuracy


def accuracy_figure(summaries: list[dict[str, Any]], tasks: list[str], methods: list[str],
                    baselines: dict[str, dict[str, float | None]] | None = None) -> bytes:
    """Per task: each seed's main metric (dots; a degenerate run as a cross) and the mean with
    its interval over seeds, beside the majority-class (dashed) and chance (dotted) rates and,
    where the runs started from it, the probe-fitted head's score (dash-dotted).

    summaries: `stats` summary records of area "metric" (values per seed, learned per seed,
    mean, ci_low/high); baselines: task -> {majority, chance, probe (optional)} of its main
    metric.
    """
    fig = new_figure(max(4.0, 1.6 * len(tasks) + 2), 3.4)
    ax = fig.subplots()
    width = 0.7 / max(len(methods), 1)
    for i, task in enumerate(tasks):
        for key, ls in (("majority", "--"), ("chance", ":"), ("probe", "-.")):
            v = (baselines or {}).get(task, {}).get(key)
            if v is not None:
                ax.plot([i - 0.42, i + 0.42], [v, v], ls=ls, color="#57606a", lw=1.1)
    for s in summaries:
        if s["task"] not in tasks or not s["values"]:
            continue
        x0 = tasks.index(s["task"]) + (methods.index(s["method"]) - (len(methods) - 1) / 2) * width
        c = color(methods, s["method"])
        learned = s.get("learned") or {}
        for seed, v in zip(s["seeds"], s["values"], strict=True):
            bad = learned.get(str(seed)) is False
            ax.scatter([x0 - width / 6], [v], s=22 if bad else 14, color=c, alpha=0.7,
                       marker="x" if bad else "o", zorder=3)
        if s.get("ci_low") is not None:
            ax.errorbar([x0 + width / 6], [s["mean"]],
                        yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
                        fmt="o", color=c, capsize=3, zorder=4)
        else:
            ax.scatter([x0 + width / 6], [s["mean"]], color=c, marker="o", zorder=4)
    for m in methods:
        ax.plot([], [], "o", color=color(methods, m), label=m)
    if baselines:
        ax.plot([], [], ls="--", color="#57606a", label="majority class")
        ax.plot([], [], ls=":", color="#57606a", label="chance")
        if any(b.get("probe") is not None for b in baselines.values()):
            ax.plot([], [], ls="-.", color="#57606a", label="probe-fitted head (start)")
        ax.plot([], [], "x", color="#57606a", label="degenerate run")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("main metric (per seed; mean and interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncols=2)
    return to_png(fig)


# ----------------------------------------------------------------------------- drift


def drift_figure(task: str, layers: list[dict[str, Any]], measures: list[str],
                 methods: list[str], measure_names: dict[str, str]) -> bytes:
    """Per-layer similarity to the base for one task: small multiples, one panel per measure.

    layers: the task's `stats` summaries of area "drift_layer" (per measure, method and layer:
    mean and t-interval over learned runs, null floor q95, seed-to-seed mean and interval).
    Per method: the mean over seeds (line over transformer layers) and its t-interval (band);
    the seed-to-seed control (dashed, hatched interval); the null floor, the 95% quantile of
    the permutation null (dotted). Layer 0 (embeddings) is drawn on its own, left of a divider,
    not joined to the transformer layers.
    """
    cols = min(3, len(measures))
    rows_n = math.ceil(len(measures) / cols)
    fig = new_figure(3.9 * cols, 2.7 * rows_n)
    axes = np.atleast_1d(fig.subplots(rows_n, cols, squeeze=False)).ravel()
    for ax in axes[len(measures):]:
        ax.set_visible(False)
    for ax, measure in zip(axes, measures, strict=False):
        for method in methods:
            pts = sorted((r for r in layers if r["measure"] == measure
                          and r["method"] == method), key=lambda r: r["layer"])
            if not pts:
                continue
            c = color(methods, method)

            def col(key: str, pts=pts) -> np.ndarray:
                return np.array([np.nan if r.get(key) is None else r[key] for r in pts],
                                dtype=float)

            x = np.array([r["layer"] for r in pts])
            blocks = x >= 1
            mean, lo, hi = col("mean"), col("ci_low"), col("ci_high")
            ax.plot(x[blocks], mean[blocks], color=c, lw=1.6, label=f"{method} vs base")
            ax.fill_between(x[blocks], lo[blocks], hi[blocks], color=c, alpha=0.2, lw=0)
            ax.plot(x[~blocks], mean[~blocks], "o", color=c, ms=4)
            if (~blocks).any() and np.isfinite(lo[~blocks]).all():
                ax.errorbar(x[~blocks], mean[~blocks],
                            yerr=[mean[~blocks] - lo[~blocks], hi[~blocks] - mean[~blocks]],
                            fmt="none", ecolor=c, lw=1)
            s2s, s_lo, s_hi = col("seed_to_seed_mean"), col("seed_to_seed_ci_low"), col(
                "seed_to_seed_ci_high")
            if np.isfinite(s2s).any():
                ax.plot(x[blocks], s2s[blocks], ls="--", color=c, lw=0.9,
                        label=f"{method} seed-to-seed")
                ax.fill_between(x[blocks], s_lo[blocks], s_hi[blocks], facecolor="none",
                                edgecolor=c, hatch="///", lw=0.4, alpha=0.6)
            floor = col("null_q95")
            if np.isfinite(floor).any():
                ax.plot(x[blocks], floor[blocks], ls=":", color=c, lw=1.1,
                        label=f"{method} null floor (q95)")
        if any(r["layer"] == 0 for r in layers):
            ax.axvline(0.5, color="#d0d7de", lw=0.8)
        ax.set_title(f"{task}: {measure_names.get(measure, measure)}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = embeddings, apart)", fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=min(6, len(handles)),
                   fontsize=7, frameon=False)
    return to_png(fig)


# ----------------------------------------------------------------------------- latency


def ecdf_figure(title: str, rows: list[dict[str, Any]], modes: list[str]) -> bytes:
    """ECDF of every timed call's latency per mode (one call = one batch), one panel per batch
    size (pooled over runs: a picture of the distributions; the tests use one median per
    run)."""
    batches = sorted({r["batch_size"] for r in rows})
    fig = new_figure(max(4.2, 3.8 * len(batches)), 3.4)
    for ax, batch in zip(_panels(fig, len(batches)), batches, strict=True):
        spread = []
        for mode in modes:
            lat = np.sort(np.concatenate([np.asarray(r["latencies_ms"], dtype=float)
                                          for r in rows if r["mode"] == mode
                                          and r["batch_size"] == batch] or [np.zeros(0)]))
            if lat.size == 0:
                continue
            spread += [lat[0], lat[-1]]
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post",
                    color=color(modes, mode), label=mode)
        if spread and min(spread) > 0 and max(spread) / min(spread) > 20:
            ax.set_xscale("log")
        style_axes(ax, f"{title}, batch {batch}", "latency per call of one batch (ms)",
                   "share of timed calls")
    return to_png(fig)


def sweep_figure(points: list[dict[str, Any]], modes: list[str], seq_lens: list[str]) -> bytes:
    """Median latency per call (one batch of batch-size examples) against batch size, one line
    per mode, one panel per length.

    points: {mode, batch_size, seq_len (str), median_ms}, one per mode and sweep point.
    """
    fig = new_figure(max(4.2, 3.8 * len(seq_lens)), 3.4)
    for ax, seq in zip(_panels(fig, len(seq_lens)), seq_lens, strict=True):
        values = []
        for mode in modes:
            pts = sorted((p["batch_size"], p["median_ms"]) for p in points
                         if p["mode"] == mode and p["seq_len"] == seq)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            values += ys
            ax.plot(xs, ys, "o-", color=color(modes, mode), label=mode, ms=4)
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        batches = sorted({p["batch_size"] for p in points if p["seq_len"] == seq})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        style_axes(ax, f"sequence length: {seq}", "batch size",
                   "median latency per batch (ms)")
    return to_png(fig)
