"""Findings in words, phrased from the outcome of each stored comparison (`stats` table).

Nothing here decides anything: the outcome (significant / equivalent / inconclusive /
insufficient runs) comes from `peftlab.stats.apply_correction` as stored by the stats stage, and
every number is the stored value formatted with `peftlab.stages.report.format`.
"""

from __future__ import annotations

from typing import Any

from peftlab.stages.report import format as f
from peftlab.stages.report.document import Paragraph, Strong, Table

OUTCOME_ORDER = ("significant", "equivalent", "inconclusive", "insufficient runs")


def value_format(c: dict[str, Any]):
    """The formatter for a comparison's values (in its own unit)."""
    return {"metric": f.metric, "drift": f.similarity}.get(c.get("area"), f.ms)


def where(c: dict[str, Any]) -> str:
    """Where the comparison was made: task and, by area, layer band or sweep point."""
    if c["area"] == "drift":
        layers = c.get("layers") or []
        span = f" (layers {layers[0]}-{layers[-1]})" if layers else ""
        return f"{c['task']}, {c['band']} layers{span}"
    if c["area"] in ("latency", "serving"):
        return f"{c['task']}, batch {c['batch_size']}, length {c['seq_len']}"
    return c["task"]


def subject(c: dict[str, Any]) -> str:
    """'lora vs full on accuracy', with modes spelled out for deployment."""
    return f"{name(c, 'a')} vs {name(c, 'b')} on {quantity(c)}"


def name(c: dict[str, Any], side: str) -> str:
    """A side of a comparison: 'lora', 'lora unmerged', 'full' (not 'full full')."""
    parts = list(dict.fromkeys(str(c[side]).split("/")))
    return " ".join(parts)


def quantity(c: dict[str, Any]) -> str:
    if c["area"] == "drift":
        return f"{c['unit']} to the base"
    return str(c.get("quantity") or c.get("unit"))


def direction(c: dict[str, Any]) -> str:
    """'lora scores lower than full', from the sign of the stored difference."""
    a, b = name(c, "a"), name(c, "b")
    up = (c.get("diff") or 0) > 0
    if c["area"] == "metric":
        return f"{a} scores {'higher' if up else 'lower'} than {b}"
    if c["area"] == "drift":
        return (f"{a} stays closer to the base model than {b}" if up
                else f"{a} moves further from the base model than {b}")
    return f"{a} is {'slower' if up else 'faster'} than {b}"


def margin_text(c: dict[str, Any]) -> str:
    m = c.get("equivalence_margin")
    if m is None:
        return ""
    if c.get("margin_relative"):
        return f"\u00b1{f.pct(m).lstrip('+')} of {name(c, 'b')}'s mean"
    return f"\u00b1{value_format(c)(m)} {c.get('unit', '')}".rstrip()


def correction_name(c: dict[str, Any]) -> str:
    return {"holm": "Holm", "bonferroni": "Bonferroni"}.get(c.get("correction"), "uncorrected")


def test_text(c: dict[str, Any]) -> str:
    """'paired t-test t(2) = -4.21, Holm-corrected p = 0.0412 (family of 3)'."""
    corrected = (f"{correction_name(c)}-corrected p = {f.pvalue(c.get('p_adjusted'))} "
                 f"(family of {c.get('family_size', 1)})")
    return f"{c.get('test')} t({f.dof(c.get('df'))}) = {f.stat(c.get('statistic'))}, {corrected}"


def effect_text(c: dict[str, Any]) -> str:
    name_ = c.get("effect_name") or "effect"
    if c.get("effect") is None:
        return f"{name_} undefined (zero spread)"
    return (f"{name_} = {f.stat(c['effect'])} "
            f"{f.interval(c.get('effect_ci_low'), c.get('effect_ci_high'), f.stat)}")


def difference_text(c: dict[str, Any]) -> str:
    fmt = value_format(c)
    conf = f"{round(100 * c['confidence'])}% CI"
    text = (f"{fmt(c.get('mean_a'))} vs {fmt(c.get('mean_b'))}; difference {fmt(c.get('diff'))}"
            f" {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}")
    if c.get("rel_diff") is not None:
        text += (f", relative {f.pct(c['rel_diff'])} "
                 f"{f.interval(c.get('rel_diff_ci_low'), c.get('rel_diff_ci_high'), f.pct)}")
    return f"{text} ({conf})"


def missing_text(c: dict[str, Any]) -> str:
    missing = c.get("missing") or {}
    return "; ".join(f"seed {s}: {why}" for s, why in missing.items())


def context_text(c: dict[str, Any]) -> str:
    """What a difference is measured against: the drift controls, the compute floor."""
    if c["area"] == "drift":
        parts = []
        if c.get("null_mean_a") is not None:
            parts.append(f"null floor {f.similarity(c['null_mean_a'])} / "
                         f"{f.similarity(c.get('null_mean_b'))}")
        if c.get("seed_to_seed_mean_a") is not None:
            parts.append(f"seed-to-seed control {f.similarity(c['seed_to_seed_mean_a'])} / "
                         f"{f.similarity(c.get('seed_to_seed_mean_b'))}")
        return f" ({'; '.join(parts)}, {name(c, 'a')} / {name(c, 'b')})" if parts else ""
    if c.get("flops_share") is not None and c.get("mode_b") == "merged":
        return f" (compute floor: the adapter adds {f.share(c['flops_share'])} of the FLOPs)"
    return ""


def phrase(c: dict[str, Any], min_runs: int) -> Paragraph:
    """One finding, worded from its stored outcome."""
    head = f"{where(c)}: "
    outcome = c["outcome"]
    n = f"n = {c['n']} seeds{context_text(c)}"
    if outcome == "insufficient runs":
        gap = missing_text(c)
        return Paragraph.of(head, f"{subject(c)} ", Strong("not tested, insufficient runs"),
                            f": {c['n']} complete pair(s), fewer than stats.min_runs = {min_runs}"
                            + (f" ({gap})" if gap else "") + ".")
    if outcome == "significant":
        return Paragraph.of(head, f"{direction(c)} on {quantity(c)}: ", Strong("significant"),
                            f". {difference_text(c)}; {test_text(c)}; {effect_text(c)}; {n}.")
    if outcome == "equivalent":
        return Paragraph.of(
            head, f"{name(c, 'a')} and {name(c, 'b')} are ", Strong("equivalent"),
            f" on {quantity(c)} within {margin_text(c)}: TOST {correction_name(c)}-corrected "
            f"p = {f.pvalue(c.get('tost_p_adjusted'))}. {difference_text(c)}; {test_text(c)}; "
            f"{effect_text(c)}; {n}.")
    why = (f"equivalence within {margin_text(c)} not shown either (TOST "
           f"{correction_name(c)}-corrected p = {f.pvalue(c.get('tost_p_adjusted'))})"
           if c.get("equivalence_margin") is not None else "no equivalence margin declared")
    return Paragraph.of(head, f"{subject(c)}: ", Strong("inconclusive"),
                        f": no significant difference, and {why}. {difference_text(c)}; "
                        f"{test_text(c)}; {effect_text(c)}; {n}.")


def counts_text(comparisons: list[dict[str, Any]]) -> str:
    counts = {o: sum(1 for c in comparisons if c["outcome"] == o) for o in OUTCOME_ORDER}
    return (f"{len(comparisons)} comparisons: "
            + ", ".join(f"{n} {o}" for o, n in counts.items()))


def comparison_table(comparisons: list[dict[str, Any]], caption: str) -> Table:
    """Every comparison of a group with the figures behind its outcome."""
    rows = []
    for c in comparisons:
        fmt = value_format(c)
        tested = c["outcome"] != "insufficient runs"
        rows.append([
            where(c), subject(c), str(c["n"]),
            f"{fmt(c.get('mean_a'))} / {fmt(c.get('mean_b'))}",
            f"{fmt(c.get('diff'))} {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}"
            if tested else f.MISSING,
            f"{f.pct(c.get('rel_diff'))} "
            f"{f.interval(c.get('rel_diff_ci_low'), c.get('rel_diff_ci_high'), f.pct)}"
            if tested and c.get("rel_diff") is not None else f.MISSING,
            f"{f.pvalue(c.get('p'))} / {f.pvalue(c.get('p_adjusted'))}" if tested else f.MISSING,
            f.pvalue(c.get("rank_p")) if tested else f.MISSING,
            effect_text(c) if tested else f.MISSING,
            (f"{margin_text(c)}: p = {f.pvalue(c.get('tost_p_adjusted'))}"
             if tested and c.get("equivalence_margin") is not None else f.MISSING),
            c["outcome"],
        ])
    return Table(["Where", "Comparison (a vs b)", "n", "Mean a / b", "Difference a - b [CI]",
                  "Relative [CI]", "t-test p / corrected", "Wilcoxon p", "Effect [CI]",
                  "Equivalence (TOST, corrected)", "Outcome"], rows, caption,
                 numeric=[False, False, True, True, True, True, True, True, False, False, False])
