"""Findings in words, phrased from the outcome of each stored comparison (`stats` table).

Nothing here decides anything: the outcome (different / negligible / equivalent / inconclusive /
insufficient runs / void, `peftlab.stats.OUTCOMES`) comes from `peftlab.stats.apply_correction`
as stored by the stats stage, and every number is a stored value formatted with
`peftlab.stages.report.format`. Comparisons that were not tested are not phrased one by one:
`untested_lines` collapses them to one line per reason. The Findings section (`findings`) shows
each family as one scannable table (`family_table`: estimate, relative change, corrected p, effect
size, n, outcome), each row's full sentence (`phrase`) folded under it; the other sections phrase
their own comparisons with the same functions. Relative changes over a reference near 0 are not
printed (`relative_shown`), and an unadjusted interval that excludes 0 beside a corrected
"no significant difference" says which is which (`unadjusted_note`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from peftlab.bench.modes import find_mode
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Outcome, Paragraph, Section, Table
from peftlab.stages.report.stored import Results, families, not_measured
from peftlab.stats import OUTCOMES

OUTCOME_ORDER = OUTCOMES
TESTED = ("different", "negligible", "equivalent", "inconclusive")


def value_format(c: dict[str, Any]):
    """The formatter for a comparison's values (in its own unit)."""
    return {"metric": f.metric, "drift": f.similarity, "seed_noise": f.similarity,
            "forgetting": f.metric}.get(c.get("area"), f.ms)


def where(c: dict[str, Any]) -> str:
    """Where the comparison was made: task and, by area, layer band or sweep point."""
    if c.get("kind") == "across_tasks":
        return "across tasks"
    if c["area"] in ("drift", "seed_noise"):
        layers = c.get("layers") or []
        span = f" ({layers[0]}-{layers[-1]})" if len(layers) > 1 else (
            f" ({layers[0]})" if layers else "")
        method = f", {c['method_a']}" if c["area"] == "seed_noise" else ""
        return f"{c['task']}{method}, {c['band']} transformer layers{span}"
    if c["area"] in ("latency", "serving"):
        return f"{c['task']}, batch {c['batch_size']}, length {c['seq_len']}"
    if c["area"] == "forgetting":  # the tuning task, then what was measured off it
        what = ("held-out LM loss" if c.get("measure") == "lm_loss"
                else f"{c.get('probe_task')} probe at {c.get('layer_name')}")
        return f"{c['task']}-tuned, {what}"
    return c["task"]


def subject(c: dict[str, Any]) -> str:
    """'lora vs full on accuracy', with modes spelled out for deployment; a comparison that is
    not like for like (`like_for_like` False in its stats record) says so."""
    text = f"{name(c, 'a')} vs {name(c, 'b')} on {quantity(c)}"
    return text + (" (not like for like)" if not_like_for_like(c) else "")


def not_like_for_like(c: dict[str, Any]) -> bool:
    """The stats record says the two sides are not like for like (e.g. mixed batches hold
    every served task's rows, the single adapter's only one task's)."""
    return c.get("like_for_like") is False


def name(c: dict[str, Any], side: str) -> str:
    """A side of a comparison: 'lora', 'lora unmerged', 'full' (not 'full full'); for the
    seed-noise control 'run-to-base' or 'seed-to-seed' (`where` names the method)."""
    if c.get("area") == "seed_noise":
        return {"a": "run-to-base", "b": "seed-to-seed"}[side]
    parts = list(dict.fromkeys(str(c[side]).split("/")))
    return " ".join(parts)


def quantity(c: dict[str, Any]) -> str:
    if c["area"] == "drift":
        return f"{c['unit']} to the base"
    if c["area"] == "seed_noise":
        return f"{c['unit']} (mean over transformer layers)"
    return str(c.get("quantity") or c.get("unit"))


def relative_shown(c: dict[str, Any]) -> bool:
    """Whether a comparison's relative change means something: it is stored, and b's mean (its
    denominator) is larger than the width of the difference's interval. Near a zero reference
    (a forgetting change of 0.01 with an interval 0.2 wide) a percentage explodes and its
    interval spans orders of magnitude; the absolute difference says it instead."""
    rel, mb = c.get("rel_diff"), c.get("mean_b")
    if not (f._finite(rel) and f._finite(mb)) or mb == 0:
        return False
    lo, hi = c.get("diff_ci_low"), c.get("diff_ci_high")
    width = hi - lo if f._finite(lo) and f._finite(hi) else abs(c.get("diff") or 0.0)
    return abs(mb) > width


def relative_text(c: dict[str, Any], with_interval: bool = True) -> str | None:
    """'+39.0% [+19.7%, +58.3%]' (relative change and its interval), or None where a relative
    change is not shown (`relative_shown`)."""
    if not relative_shown(c):
        return None
    text = f.pct(c["rel_diff"])
    if with_interval and c.get("rel_diff_ci_low") is not None:
        text += f" {f.interval(c.get('rel_diff_ci_low'), c.get('rel_diff_ci_high'), f.pct)}"
    return text


def excludes_zero(c: dict[str, Any]) -> bool:
    """The (unadjusted) interval of the difference lies wholly on one side of 0."""
    lo, hi = c.get("diff_ci_low"), c.get("diff_ci_high")
    return f._finite(lo) and f._finite(hi) and (lo > 0 or hi < 0)


def unadjusted_note(c: dict[str, Any]) -> str:
    """Why an interval that excludes 0 sits beside 'no significant difference': the interval is
    unadjusted, p is corrected for its family. '' where there is nothing to explain."""
    if c.get("outcome") == "different" or c.get("status") != "ok" or not excludes_zero(c):
        return ""
    corr = correction_name(c)
    if corr == "uncorrected":
        return ""
    return (f"its {round(100 * c['confidence'])}% interval excludes 0 but is unadjusted, while "
            f"p is {corr}-corrected for the {family_text(c)}")


def direction(c: dict[str, Any]) -> str:
    """'lora scores lower than full', from the sign of the stored difference."""
    a, b = name(c, "a"), name(c, "b")
    up = (c.get("diff") or 0) > 0
    if c["area"] == "metric":
        return f"{a} scores {'higher' if up else 'lower'} than {b}"
    if c["area"] == "drift":
        return (f"{a} stays closer to the base model than {b}" if up
                else f"{a} moves further from the base model than {b}")
    if c["area"] == "seed_noise":
        m = c.get("method_a")
        return (f"{m}'s runs are further from the base than from each other (its drift exceeds "
                "seed noise)" if not up else
                f"{m}'s runs are closer to the base than to each other (drift within seed noise)")
    if c["area"] == "forgetting":  # probe: higher = kept more; LM loss: higher = forgot more
        kept = up == bool(c.get("higher_is_better"))
        return f"{a} forgets {'less' if kept else 'more'} than {b}"
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


def family_text(c: dict[str, Any]) -> str:
    fam = "primary family" if c.get("role") == "primary" else f"family {c.get('family')}"
    return f"{fam} of {c.get('family_size', 1)}"


def test_text(c: dict[str, Any]) -> str:
    """'paired t-test t(2) = -4.21, Holm-corrected p = 0.0412 (primary family of 10)'; with
    zero spread the exact Wilcoxon test that decided instead."""
    corrected = (f"{correction_name(c)}-corrected p {f.p_eq(c.get('p_adjusted'))} "
                 f"({family_text(c)})")
    if c.get("t_undefined_reason"):
        return (f"t undefined (zero spread of the paired differences): {c.get('decision_test')} "
                f"p {f.p_eq(c.get('decision_p'))} decides, {corrected}")
    return f"{c.get('test')} t({f.dof(c.get('df'))}) = {f.stat(c.get('statistic'))}, {corrected}"


def effect_text(c: dict[str, Any]) -> str:
    name_ = c.get("effect_name") or "effect"
    if c.get("effect") is None:
        return f"{name_} undefined (zero spread)"
    if c.get("effect_ci_low") is None:
        return f"{name_} = {f.stat(c['effect'])}"
    return (f"{name_} = {f.stat(c['effect'])} "
            f"{f.interval(c.get('effect_ci_low'), c.get('effect_ci_high'), f.stat)}")


def difference_text(c: dict[str, Any]) -> str:
    fmt = value_format(c)
    conf = f"{round(100 * c['confidence'])}% CI"
    if c.get("kind") == "across_tasks":
        return (f"estimate {fmt(c.get('diff'))} "
                f"{f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)} ({conf}, "
                "unadjusted)")
    text = (f"{fmt(c.get('mean_a'))} vs {fmt(c.get('mean_b'))}; difference {fmt(c.get('diff'))}"
            f" {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}")
    rel = relative_text(c)
    if rel is not None:
        text += f", relative {rel}"
    elif c.get("rel_diff") is not None:
        text += f" (no relative change: {name(c, 'b')}'s mean {fmt(c.get('mean_b'))} is near 0)"
    return f"{text} ({conf}, unadjusted)"


def units(c: dict[str, Any], short: bool = False) -> str:
    """What a comparison's n counts: blocks (fresh processes) in the paired latency design,
    seeds otherwise."""
    if c.get("design") == "paired":
        return "blocks" if short else "blocks (fresh processes)"
    return "seeds"


def n_short(c: dict[str, Any]) -> str:
    """'3 seeds', '7 blocks' or '9 pairs' (learned runs across tasks)."""
    return f"{c['n']} {'pairs' if c.get('kind') == 'across_tasks' else units(c, True)}"


def n_text(c: dict[str, Any]) -> str:
    if c.get("kind") == "across_tasks":
        why = f" ({c['fit_reason']})" if c.get("fit_reason") and c.get("fit") != "none" else ""
        return (f"n = {c['n']} pairs of learned runs over {c.get('n_tasks')} task(s), "
                f"{c.get('n_seeds')} seeds; {c.get('fit')}{why}")
    return f"n = {c['n']} {units(c)}"


def power_text(c: dict[str, Any]) -> str:
    """What the comparison could have detected: the minimum detectable d_z at its n and
    corrected alpha, in the measure's unit too, and the seeds the observed effect needs."""
    if c.get("mde_dz") is None:
        return ""
    pw = f"{round(100 * c.get('power', 0.8))}%"
    unit = f" (about {value_format(c)(c['mde_diff'])} {c.get('unit', '')})".replace(" )", ")") \
        if c.get("mde_diff") is not None else ""
    text = (f"at this n and alpha {f.pvalue(c.get('mde_alpha'))} (corrected) the study detects "
            f"|d_z| \u2265 {f.stat(c['mde_dz'])}{unit} with {pw} power")
    if c.get("runs_needed") is not None:
        per = " per task" if c.get("kind") == "across_tasks" else ""
        text += (f"; the observed d_z would need {c['runs_needed']} {units(c, True)}{per} for {pw} "
                 "power")
    return text


def power_short(c: dict[str, Any]) -> str:
    """`power_text` in a few words: 'could detect |d_z| >= 6.55 (about 0.330 ms); the observed
    effect needs 17 seeds'."""
    if c.get("mde_dz") is None:
        return ""
    unit = (f" (about {value_format(c)(c['mde_diff'])} {c.get('unit', '')})".replace(" )", ")")
            if c.get("mde_diff") is not None else "")
    text = f"could detect |d_z| \u2265 {f.stat(c['mde_dz'])}{unit}"
    if c.get("runs_needed") is not None:
        per = " per task" if c.get("kind") == "across_tasks" else ""
        text += f"; the observed effect needs {c['runs_needed']} {units(c, True)}{per}"
    return text


def outcome_cell(c: dict[str, Any]) -> str:
    """The outcome word for a table cell; an inconclusive one with what it could detect."""
    if c["outcome"] == "inconclusive" and c.get("mde_dz") is not None:
        return f"inconclusive (could detect |d_z| \u2265 {f.stat(c['mde_dz'])})"
    if c["outcome"] in ("equivalent", "negligible") and c.get("tost_p_adjusted") is not None:
        # the corrected p beside it is the difference test's: say which p decided this one
        return (f"{c['outcome']} (within {margin_text(c)}: equivalence test, corrected p "
                f"{f.p_eq(c['tost_p_adjusted'])})")
    return c["outcome"]


def folds_adapter(mode: Any) -> bool:
    """Whether stored mode name `mode` serves the adapter folded into the base weights
    (`Mode.folds_adapter`): against it, a live adapter path's FLOPs share is the compute-only
    floor of its extra latency. False for a name no mode is registered under here."""
    registered = find_mode(mode)
    return registered is not None and registered.folds_adapter


def context_text(c: dict[str, Any]) -> str:
    """What a difference is measured against: the drift floors and controls, compute floor."""
    if c["area"] == "drift" and c.get("kind") != "across_tasks":
        parts = []
        if c.get("null_q95_a") is not None:
            parts.append(f"null floor (q95) {f.similarity(c['null_q95_a'])} / "
                         f"{f.similarity(c.get('null_q95_b'))}")
        if c.get("seed_to_seed_mean_a") is not None:
            parts.append(f"seed-to-seed control {f.similarity(c['seed_to_seed_mean_a'])} / "
                         f"{f.similarity(c.get('seed_to_seed_mean_b'))}")
        return f" ({'; '.join(parts)}, {name(c, 'a')} / {name(c, 'b')})" if parts else ""
    if c.get("flops_share") is not None and folds_adapter(c.get("mode_b")):
        return f" (compute floor: the adapter adds {f.share(c['flops_share'])} of the FLOPs)"
    return ""


def phrase(c: dict[str, Any]) -> Paragraph:
    """One tested finding, worded from its stored outcome, with its numbers and its power."""
    head = f"{where(c)}: "
    outcome = c["outcome"]
    tail = f"{difference_text(c)}; {test_text(c)}; {effect_text(c)}; {n_text(c)}" \
           f"{context_text(c)}"
    power = power_text(c)
    if c["area"] == "seed_noise":  # name the two sides: the direction alone is abstract
        head += f"{name(c, 'a')} vs {name(c, 'b')}: "
    if outcome == "different":
        beyond = (f", and TOST does not place it within {margin_text(c)}"
                  if c.get("equivalence_margin") is not None else "")
        return Paragraph.of(head, f"{direction(c)} on {quantity(c)}: ", Outcome("different"),
                            f"{beyond}. {tail}{like_for_like_text(c)}.")
    if outcome == "negligible":
        return Paragraph.of(
            head, f"{direction(c)} on {quantity(c)}, but by less than {margin_text(c)}: ",
            Outcome("negligible"), f" (different, TOST {correction_name(c)}-corrected p "
            f"{f.p_eq(c.get('tost_p_adjusted'))} places it inside the margin). {tail}"
            f"{like_for_like_text(c)}.")
    if outcome == "equivalent":
        return Paragraph.of(
            head, f"{name(c, 'a')} and {name(c, 'b')} are ", Outcome("equivalent"),
            f" on {quantity(c)} within {margin_text(c)}: TOST {correction_name(c)}-corrected "
            f"p {f.p_eq(c.get('tost_p_adjusted'))}. {tail}{like_for_like_text(c)}.")
    why = (f"equivalence within {margin_text(c)} not shown either (TOST "
           f"{correction_name(c)}-corrected p {f.p_eq(c.get('tost_p_adjusted'))})"
           if c.get("equivalence_margin") is not None else "no equivalence margin declared")
    note = unadjusted_note(c)
    return Paragraph.of(head, f"{subject(c)}: ", Outcome("inconclusive"),
                        f": no significant difference after correction, and {why}"
                        f"{'; ' + note if note else ''}; {power or 'no power figure'}. "
                        f"{tail}{like_for_like_text(c)}.")


FEW_CALLS = 10  # a per-seed median of fewer timed calls than this is flagged


def calls_text(c: dict[str, Any]) -> str:
    """'; each seed's median of sst2's calls rests on 4 timed calls (few: < 10)' for a
    multi-adapter comparison whose per-task medians rest on few calls (`calls_a` in its stats
    record), else ''."""
    calls = c.get("calls_a") or {}
    if not calls or min(calls.values()) >= FEW_CALLS:
        return ""
    lo, hi = min(calls.values()), max(calls.values())
    return (f"; each seed's median of {c['task']}'s calls rests on "
            f"{lo if lo == hi else f'{lo}-{hi}'} timed calls (few: < {FEW_CALLS})")


def like_for_like_text(c: dict[str, Any]) -> str:
    """'; not like for like: <why>' for a comparison its stats record marks so, and the few
    calls its medians rest on (`calls_text`); '' when neither applies."""
    if not not_like_for_like(c):
        return calls_text(c)
    return (f"; not like for like: {c.get('like_for_like_reason') or 'see its stats record'}"
            + calls_text(c))


def counts_text(comparisons: list[dict[str, Any]]) -> str:
    counts = {o: sum(1 for c in comparisons if c["outcome"] == o) for o in OUTCOME_ORDER}
    return (f"{len(comparisons)} comparisons: "
            + ", ".join(f"{n} {o}" for o, n in counts.items()))


# ----------------------------------------------------------------------------- not tested

_PREFIX = re.compile(r"^[\w+-]+( \([\w.+-]+\))?: ")


def _why_seed(reason: str) -> str:
    """A missing seed's reason without its method/mode prefix ("merged (lora): not
    benchmarked" -> "not benchmarked")."""
    return _PREFIX.sub("", reason.split("; ")[0])


def untested_key(c: dict[str, Any]) -> tuple[str, str]:
    """(outcome, reason) that groups comparisons which were not tested for the same reason."""
    if c["outcome"] == "void":
        where_ = "across tasks" if c.get("kind") == "across_tasks" else f"on {c['task']}"
        return "void", c.get("void_because") or f"degenerate runs {where_}"
    missing = c.get("missing") or {}
    whys = sorted({_why_seed(r) for r in missing.values()})
    seeds = ", ".join(sorted(missing, key=lambda s: int(s) if s.lstrip("-").isdigit() else 0))
    detail = f" (seed {seeds}: {'; '.join(whys)})" if missing else ""
    return "insufficient runs", f"{c['n']} complete pair(s), fewer than needed{detail}"


def untested_lines(comparisons: list[dict[str, Any]], min_runs: int, limit: int = 8
                   ) -> list[Paragraph]:
    """One line per reason for every comparison that was not tested (insufficient runs,
    void), naming the comparisons it covers (the first `limit`, then how many more)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in comparisons:
        if c["outcome"] not in TESTED:
            groups[untested_key(c)].append(c)
    out = []
    for (outcome, reason), comps in groups.items():
        reason = reason.replace("fewer than needed", f"fewer than stats.min_runs = {min_runs}")
        names = [f"{where(c)}: {subject(c)}" for c in comps]
        shown = "; ".join(names[:limit]) + (f"; and {len(names) - limit} more"
                                            if len(names) > limit else "")
        out.append(Paragraph.of(Outcome(outcome), f" \u2014 {reason}: {len(comps)} "
                                f"comparison{'s' if len(comps) != 1 else ''} ({shown})."))
    return out


# ----------------------------------------------------------------------------- tables


def comparison_table(comparisons: list[dict[str, Any]], caption: str) -> Table:
    """Every comparison of a group with the figures behind its outcome."""
    rows = []
    for c in comparisons:
        fmt = value_format(c)
        tested = c["status"] == "ok"
        p = (f"{f.pvalue(c.get('decision_p'))} ({'Wilcoxon' if c.get('t_undefined_reason') else 't'})"
             if tested else f.MISSING)
        family = str(c.get("family", "")).removeprefix("exploratory/")
        rows.append([
            where(c), subject(c),
            f"{family} ({c.get('family_size', 1)})" if tested else family,
            str(c["n"]),
            f"{fmt(c.get('mean_a'))} / {fmt(c.get('mean_b'))}",
            f"{fmt(c.get('diff'))} {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}"
            if tested else f.MISSING,
            relative_cell(c) if tested else f.MISSING,
            p, f.pvalue(c.get("p_adjusted")) if tested else f.MISSING,
            f.pvalue(c.get("rank_p")) if tested and c.get("rank_p") is not None else f.MISSING,
            effect_text(c) if tested else f.MISSING,
            (f"{margin_text(c)}: p {f.p_eq(c.get('tost_p_adjusted'))}"
             if tested and c.get("equivalence_margin") is not None else f.MISSING),
            (f"{f.stat(c.get('mde_dz'))}" + (f" / {c['runs_needed']}" if c.get("runs_needed")
                                              else "")) if tested else f.MISSING,
            outcome_cell(c) + ("; unadjusted CI excludes 0" if unadjusted_note(c) else ""),
        ])
    return Table(["Where", "Comparison (a vs b)", "Family (m tested)", "n",
                  "Mean a / b", "Difference a - b [CI, unadjusted]", "Relative [CI]", "p (test)",
                  "Corrected p", "Wilcoxon p", "Effect [CI]", "Equivalence (TOST, corrected)",
                  "MDE d_z / seeds (blocks) needed", "Outcome"], rows, caption,
                 numeric=[False, False, False, True, True, True, True, True, True, True, False,
                          False, True, False])


def relative_cell(c: dict[str, Any]) -> str:
    """The relative change with its interval, or why it is not shown."""
    rel = relative_text(c)
    if rel is not None:
        return rel
    return "not shown (reference near 0)" if c.get("rel_diff") is not None else f.MISSING


def estimate_cell(c: dict[str, Any]) -> str:
    """'+0.331 [+0.170, +0.492] ms': the difference a - b with its (unadjusted) interval, and the
    unit where it is one (ms, nats per token)."""
    fmt = value_format(c)
    unit = c.get("unit") if c.get("unit") in ("ms", "nats per token") else ""
    return (f"{fmt(c.get('diff'))} {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}"
            f"{' ' + unit if unit else ''}")


def n_cell(c: dict[str, Any]) -> str:
    """'3 seeds (paired)' or '4 pairs over 2 tasks'; a multi-adapter comparison adds the
    timed calls each seed's median rests on when they are few."""
    if c.get("kind") == "across_tasks":
        return f"{c['n']} pairs over {c.get('n_tasks')} tasks"
    if c.get("design") == "paired":
        return f"{c['n']} blocks (ABBA rounds in fresh processes)"
    calls = list((c.get("calls_a") or {}).values())
    if not calls or min(calls) >= FEW_CALLS:
        return f"{c['n']} seeds (paired)"
    span = str(min(calls)) if min(calls) == max(calls) else f"{min(calls)}-{max(calls)}"
    return f"{c['n']} seeds (paired); {span} calls per seed (few)"


def family_table(comparisons: list[dict[str, Any]], caption: str) -> Table:
    """The tested comparisons of a family, one scannable row each (comparison, estimate with
    interval, relative change, corrected p, effect size, n and unit, outcome), each row's full
    sentence (`phrase`) folded under it."""
    rows = []
    for c in comparisons:
        out = outcome_cell(c)
        if unadjusted_note(c):
            out += "; unadjusted CI excludes 0"
        rows.append([where(c), subject(c), estimate_cell(c), relative_cell(c),
                     f"{f.pvalue(c.get('p_adjusted'))} ({correction_name(c)}, "
                     f"m = {c.get('family_size', 1)})", effect_text(c), n_cell(c), out])
    return Table(["Where", "Comparison (a vs b)", "Estimate a - b [CI]", "Relative change [CI]",
                  "Corrected p", "Effect size [CI]", "n", "Outcome"], rows, caption,
                 numeric=[False, False, True, True, True, False, False, False], fold=False,
                 notes=[phrase(c) for c in comparisons], notes_title="Each finding in full")


# ----------------------------------------------------------------------------- the section


def findings(res: Results) -> Section:
    s = Section("Findings", "findings")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    s.add(Paragraph.of(counts_text(res.comparisons) + "."))
    groups = [("Primary endpoints", [c for c in res.comparisons if c.get("role") == "primary"])]
    for family in families(res):
        if family != "primary":
            groups.append((f"Exploratory: {family.split('/', 1)[-1].replace('_', ' ')}",
                           [c for c in [*res.comparisons, *res.readouts]
                            if c.get("family") == family and c.get("role") != "primary"]))
    conf = f"{round(100 * (1 - res.spec.stats.alpha))}%"
    for title, comps in groups:
        sub = s.sub(title)
        tested = [c for c in comps if c["outcome"] in TESTED]
        if tested:
            sub.add(family_table(tested, (
                f"{len(tested)} tested comparison(s): the estimate a - b with its {conf} "
                "interval (unadjusted), the p-value corrected within the family, the paired "
                "effect size, n and the outcome; each finding's full sentence folds under its "
                "row.")))
        untested = untested_lines(comps, res.min_runs)
        if untested:
            sub.add(Paragraph.of("Not tested, one line per reason:"), Bullets(untested))
        if not comps:
            sub.add(Paragraph.of("No comparison of this kind: the study has no results for "
                                 "it (see the sections below)."))
    return s
