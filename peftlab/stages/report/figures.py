"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so no global state, no
display and no backend switch is involved, and each figure is freed as soon as it is saved. PNG
metadata carries no software version or date, so the same results give the same bytes.

Every function takes rows already read from the results tables and draws them; nothing here
computes a statistic the report prints.
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
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


# ----------------------------------------------------------------------------- accuracy


def accuracy_figure(summaries: list[dict[str, Any]], tasks: list[str], methods: list[str]
                    ) -> bytes:
    """Per task: each seed's main metric (dots) and the mean with its interval over seeds.

    summaries: `stats` summary records of area "metric" (values per seed, mean, ci_low/high).
    """
    fig = new_figure(max(4.0, 1.6 * len(tasks) + 2), 3.4)
    ax = fig.subplots()
    width = 0.7 / max(len(methods), 1)
    for s in summaries:
        if s["task"] not in tasks or not s["values"]:
            continue
        x0 = tasks.index(s["task"]) + (methods.index(s["method"]) - (len(methods) - 1) / 2) * width
        c = color(methods, s["method"])
        ax.scatter(np.full(len(s["values"]), x0 - width / 6), s["values"], s=14, color=c,
                   alpha=0.6, zorder=3)
        if s.get("ci_low") is not None:
            ax.errorbar([x0 + width / 6], [s["mean"]],
                        yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
                        fmt="o", color=c, capsize=3, zorder=4)
        else:
            ax.scatter([x0 + width / 6], [s["mean"]], color=c, marker="o", zorder=4)
    for m in methods:
        ax.plot([], [], "o", color=color(methods, m), label=m)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("main metric (per seed; mean and interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return to_png(fig)


# ----------------------------------------------------------------------------- drift


def drift_figure(task: str, records: list[dict[str, Any]], measures: list[str],
                 methods: list[str], measure_names: dict[str, str]) -> bytes:
    """Per-layer similarity to the base for one task, one panel per measure.

    records: the task's `drift` records (base_vs_run and seed_to_seed) of the runs in the study.
    Per method: the mean over seeds (line) and the range over seeds (band), the CKA null floor
    (dotted: mean over runs of the permutation null's mean) and the seed-to-seed control (hatched
    band: range over pairs of seeds of the similarity between two runs of the method). An
    undefined layer (stored as None) leaves a gap.
    """
    fig = new_figure(5.2 * len(measures), 3.6)
    layers = sorted({r["layer"] for r in records})
    index = {layer: i for i, layer in enumerate(layers)}
    for ax, measure in zip(_panels(fig, len(measures)), measures, strict=True):
        for method in methods:
            base = defaultdict(list)
            ctrl = defaultdict(list)
            null = defaultdict(list)
            for r in records:
                if r["method"] != method:
                    continue
                v = (r.get("values") or {}).get(measure)
                target = base if r["kind"] == "base_vs_run" else ctrl
                target[r["run_b"] if r["kind"] == "base_vs_run" else (r["run_a"], r["run_b"])
                       ].append((r["layer"], np.nan if v is None else float(v)))
                floor = ((r.get("null") or {}).get(measure) or {}).get("null_mean")
                if r["kind"] == "base_vs_run" and floor is not None:
                    null[r["layer"]].append(float(floor))
            if not base:
                continue
            c = color(methods, method)
            curves = _matrix(base, index)
            x = np.asarray(layers)
            with warnings.catch_warnings():
                # an undefined layer is NaN for every seed: a gap in the curve, not a problem
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(x, np.nanmean(curves, axis=0), color=c, lw=1.8,
                        label=f"{method} vs base")
                ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0),
                                color=c, alpha=0.22, lw=0)
                if ctrl:
                    pairs = _matrix(ctrl, index)
                    ax.fill_between(x, np.nanmin(pairs, axis=0), np.nanmax(pairs, axis=0),
                                    facecolor="none", edgecolor=c, hatch="///", lw=0.6,
                                    alpha=0.7, label=f"{method} seed-to-seed")
            if null:
                ax.plot(x, [np.mean(null[layer]) if null[layer] else np.nan for layer in layers],
                        ls=":", color=c, lw=1.2, label=f"{method} null floor")
        ax.set_title(f"{task}: {measure_names.get(measure, measure)}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("similarity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return to_png(fig)


def _matrix(curves: dict[Any, list[tuple[int, float]]], index: dict[int, int]) -> np.ndarray:
    out = np.full((len(curves), len(index)), np.nan)
    for i, points in enumerate(curves.values()):
        for layer, v in points:
            out[i, index[layer]] = v
    return out


# ----------------------------------------------------------------------------- latency


def ecdf_figure(title: str, rows: list[dict[str, Any]], modes: list[str]) -> bytes:
    """ECDF of every raw request latency per mode, one panel per batch size (pooled over runs:
    a picture of the distributions; the tests use one median per run)."""
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
        ax.set_title(f"{title}, batch {batch}", fontsize=10)
        ax.set_xlabel("latency per request (ms)")
        ax.set_ylabel("share of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return to_png(fig)


def sweep_figure(points: list[dict[str, Any]], modes: list[str], seq_lens: list[str]) -> bytes:
    """Median latency per request against batch size, one line per mode, one panel per length.

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
        ax.set_title(f"sequence length: {seq}", fontsize=10)
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return to_png(fig)
