"""The Weight space section: per adapted matrix kind, the size and rank of each method's update and
its intruder dimensions, averaged over learned runs (`weights` records).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.stages.report import format as f
from peftlab.stages.report.document import Paragraph, Section, Table
from peftlab.stages.report.stored import Results, not_measured


def weights(res: Results) -> Section:
    s = Section("Weight space", "weights")
    if not res.weights:
        return s.add(not_measured("weight-space records", "drift"))
    bad = {d["run_id"] for d in res.degenerate_runs()}
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in res.weights:
        if r["run_id"] in bad:
            continue
        groups[(r["task"], r["method"], r.get("matrix") or r["module"].split(".")[-1],
                r.get("update", ""))].append(r)
    rows = []
    order = {t: i for i, t in enumerate(res.view.tasks)}
    morder = {m: i for i, m in enumerate(res.view.methods)}
    for (task, method, matrix, update), recs in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], 99), morder.get(kv[0][1], 99),
                                            kv[0][2])):
        ok = [r for r in recs if not r.get("undefined")]

        def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        dtypes = sorted({str(r.get("dtype")) for r in ok if r.get("dtype")})
        rows.append([task, method, matrix, update, str(len({r["run_id"] for r in recs})),
                     str(len(recs)), f.sig(mean("update_fro")), f.sig(mean("relative_update")),
                     f.num(mean("effective_rank"), 2), f.num(mean("numerical_rank"), 2),
                     f.num(mean("rank_energy"), 2), f"{f.sig(mean('rank_cutoff'))} "
                     f"({', '.join(dtypes) or f.MISSING})",
                     f.num(mean("intruder_dims"), 2),
                     f.integer(sum(r.get("intruder_dims") or 0 for r in ok)),
                     str(len(recs) - len(ok))])
    first = next((r for r in res.weights if r.get("top_k")), {})
    s.add(Paragraph.of(
        f"{analysed_text(res)} Each matrix's update is averaged over the matrices of its kind "
        "and over learned runs: 'B A (exact)' is LoRA's update formed from its factors (rank at "
        "most r, "
        "no rounding); 'merged - base' the merged adapter minus the base (DoRA, AdaLoRA, IA3); "
        "'tuned - base' full fine-tuning. Ranks count singular values above a cut-off set by "
        "the precision the weights are stored in (shown with its dtype). Intruder dimensions: "
        f"top-{first.get('top_k', f.MISSING)} singular vectors of the tuned matrix with "
        f"|cosine| below {first.get('epsilon', f.MISSING)} to every singular vector of the "
        "base."),
          Table(["Task", "Method", "Matrix", "Update", "Runs", "Matrices", "||dW||_F (mean)",
                 "||dW||_F / ||W||_F (mean)", "Effective rank (mean)",
                 "Numerical rank (mean)", "Energy rank (mean)", "Rank cut-off (dtype)",
                 "Intruder dims (mean)", "Intruder dims (total)", "Undefined"], rows,
                "Weight-space statistics per matrix kind.",
                numeric=[False, False, False, False] + [True] * 11))
    return s


def analysed_text(res: Results) -> str:
    """Which weight matrices were analysed, per method, and where that is fewer than a method
    adapts (drift.weight_modules, or the PEFT method's target_modules): 'Matrices analysed:
    full: query, value; lora: query, value (drift.weight_modules: query, value; lora adapts
    all-linear: matrices outside the list are not analysed).'"""
    kinds: dict[str, set[str]] = defaultdict(set)
    for r in res.weights:
        kinds[r["method"]].add(r.get("matrix") or r["module"].split(".")[-1])
    shown = "; ".join(f"{m}: {', '.join(sorted(kinds[m]))}" for m in res.view.methods
                      if m in kinds)
    chosen = res.spec.drift.weight_modules
    notes = [f"drift.weight_modules: {', '.join(chosen)}" if chosen
             else "drift.weight_modules unset: every matrix each method changed"]
    for m in res.view.peft():
        params = res.spec.methods[m]
        targets = getattr(params, "target_modules", None)
        if targets is None and isinstance(params, dict):
            targets = params.get("target_modules")
        if targets is None:
            continue
        listed = targets if isinstance(targets, str) else ", ".join(targets)
        if chosen and (isinstance(targets, str) or set(targets) - set(chosen)):
            notes.append(f"{m} adapts {listed}: its other adapted matrices are not analysed")
    return f"Matrices analysed: {shown} ({'; '.join(notes)})."
