"""The report read as a hostile reviewer would (issue 29): every number of the Answers and the trust
panel recomputed from the stored tables, and sentences a reviewer would flag searched for.

    .venv/bin/python -m pytest tests/test_report_review.py -q

The study is the sample in the quickstart's shape (`write_sample(quickstart=True)`): a MiniLM
encoder read by the sentence-embedding head, every run finished and learned, drift close to 1 for
both methods, LoRA at other learning rates than full fine-tuning, 12 timed calls per sweep point,
multi-adapter calls matched batch by batch and mixed ones not, and serving-under-load runs where
mixed batching sustains no rate. Numbers are recomputed here from the runs, baselines, drift and
bench tables with NumPy and SciPy, never read from the stats stage's records, and must be what the
report prints (at the report's fixed precision).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import pytest
from rich.console import Console
from scipy import optimize
from scipy import stats as sst

from peftlab.context import Context
from peftlab.results import bench_rows
from peftlab.stages.report import format as f
from peftlab.stages.report import run as report_stage
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.testing.sample_study import QS_RATES, write_sample

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?(?![\w])")
LINK = re.compile(r"\[([^\]]*)\]\(#glossary-[a-z0-9-]+\)")


def _plain(md: str) -> str:
    """Markdown as a reader sees it: glossary links as their text, escapes and entities undone."""
    text = LINK.sub(r"\1", md)
    text = re.sub(r"\\([\\`*_|~\]\[#+\-=>.)])", r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    study = write_sample(tmp_path_factory.mktemp("review"), degenerate=False, quickstart=True)
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage(ctx)
        report_stage(ctx)
        tables = {t: store.records(t) for t in ("runs", "baselines", "drift", "bench", "stats",
                                                "serving", "forgetting")}
    finally:
        store.close()
    md = (study.output_dir / "report.md").read_text(encoding="utf-8")
    return {"study": study, "spec": study.spec, "md": md, "plain": _plain(md), **tables,
            "bench_rows": bench_rows(tables["bench"])}


def _section(plain: str, title: str) -> str:
    m = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", plain, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(2)


def _tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
            if not all(set(c) <= set("-:|") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


# ----------------------------------------------------------------------------- recomputation


def _power(d: float, n: int, alpha: float, df: int | None = None) -> float:
    """Power of a two-sided t-test of a standardised effect d with n pairs (noncentral t)."""
    df = n - 1 if df is None else df
    crit = sst.t.isf(alpha / 2, df)
    ncp = d * math.sqrt(n)
    # P(T < -c; ncp) = P(T > c; -ncp): scipy's nct.cdf is NaN at large ncp, its sf is not
    return float(sst.nct.sf(crit, df, ncp) + sst.nct.sf(crit, df, -ncp))


def _mde(n: int, alpha: float, power: float, df: int | None = None) -> float:
    hi = 1.0
    while _power(hi, n, alpha, df) < power:  # bracket, then solve
        hi *= 2.0
    return float(optimize.brentq(lambda d: _power(d, n, alpha, df) - power, 1e-6, hi,
                                 xtol=1e-10))


def _seeds_needed(d: float, alpha: float, power: float) -> int:
    n = 2
    while _power(abs(d), n, alpha) < power:
        n += 1
    return n


def _paired(a: list[float], b: list[float], conf: float) -> dict[str, float]:
    """Everything the report prints about a paired comparison, recomputed: mean difference and
    its t-interval, relative change (delta method) and its interval, p, d_z, sd of the
    differences."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = d.size
    half = sst.t.ppf(0.5 + conf / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    ratio = a.mean() / b.mean()
    z = (a - ratio * b) / b.mean()
    rhalf = sst.t.ppf(0.5 + conf / 2, n - 1) * z.std(ddof=1) / math.sqrt(n)
    return {"diff": d.mean(), "lo": d.mean() - half, "hi": d.mean() + half,
            "rel": ratio - 1, "rel_lo": ratio - 1 - rhalf, "rel_hi": ratio - 1 + rhalf,
            "p": float(sst.ttest_rel(a, b).pvalue), "dz": d.mean() / d.std(ddof=1),
            "sd": d.std(ddof=1), "n": n, "mean_a": a.mean(), "mean_b": b.mean()}


def _holm(ps: list[float]) -> list[float]:
    order = np.argsort(ps)
    m, out, running = len(ps), [0.0] * len(ps), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * ps[k]))
        out[k] = running
    return out


def _drift_by_seed(review, task: str, method: str, measure: str) -> dict[int, float]:
    """Per seed: the run's measure to the base, mean over the transformer layers (1..)."""
    vals: dict[int, list[float]] = defaultdict(list)
    for r in review["drift"]:
        if (r["kind"], r["task"], r["method"]) == ("base_vs_run", task, method) \
                and r["layer"] >= 1 and r["values"].get(measure) is not None:
            vals[r["seed_b"]].append(r["values"][measure])
    return {s: float(np.mean(v)) for s, v in vals.items()}


def _p50(review, mode: str, task: str, method: str, batch: int) -> dict[int, float]:
    return {r["seed"]: r["p50_ms"] for r in review["bench_rows"]
            if r["ok"] and r["mode"] == mode and r["task"] == task and r["method"] == method
            and r["batch_size"] == batch}


def _baseline_floor(review, task: str, metric: str) -> tuple[float, float, float, float]:
    """(highest baseline, majority, chance, untrained head) of a task's metric, from the
    baselines table."""
    b = next(x for x in review["baselines"] if x["task"] == task)
    majority = b["majority"]["metrics"][metric]["value"]
    best = (b.get("best_constant") or {}).get(metric, {}).get("value")
    chance = b["chance"]["metrics"][metric]["value"]
    head = b["untrained_head"]["metrics"][metric]["value"]
    return max(x for x in (majority, best, chance) if x is not None), majority, chance, head


def _primary(review) -> dict[str, dict]:
    """The primary comparisons recomputed from the source tables: RQ1 across tasks (the pooled
    paired analysis, exact for these complete balanced pairs) and RQ2 per task at batch 1."""
    spec = review["spec"]
    conf = 1 - spec.stats.alpha
    measure = spec.stats.primary.drift.measure
    tasks = [t.name for t in spec.tasks]
    out: dict[str, dict] = {}
    diffs, per_task = [], {}
    for task in tasks:
        a = _drift_by_seed(review, task, "lora", measure)
        b = _drift_by_seed(review, task, "full", measure)
        seeds = sorted(set(a) & set(b))
        out[f"RQ1 {task}"] = _paired([a[s] for s in seeds], [b[s] for s in seeds], conf)
        d = np.array([a[s] - b[s] for s in seeds])
        per_task[task] = d
        diffs.append(d)
    n_pairs, n_tasks = sum(d.size for d in diffs), len(diffs)
    df = n_pairs - n_tasks
    est = float(np.mean([d.mean() for d in diffs]))
    s2 = sum(float(((d - d.mean()) ** 2).sum()) for d in diffs) / df
    se = math.sqrt(s2 * sum(1 / d.size for d in diffs)) / n_tasks
    half = sst.t.ppf(0.5 + conf / 2, df) * se
    out["RQ1"] = {"diff": est, "lo": est - half, "hi": est + half, "df": df,
                  "p": float(2 * sst.t.sf(abs(est / se), df)), "n": n_pairs,
                  "n_tasks": n_tasks, "sd": math.sqrt(s2), "dz": est / math.sqrt(s2)}
    for task in tasks:
        for pair, (ma, mb, meth_b) in {"unmerged_vs_merged": ("unmerged", "merged", "lora"),
                                       "merged_vs_full": ("merged", "full", "full")}.items():
            a = _p50(review, ma, task, "lora", 1)
            b = _p50(review, mb, task, meth_b, 1)
            seeds = sorted(set(a) & set(b))
            out[f"RQ2 {pair} {task}"] = _paired([a[s] for s in seeds], [b[s] for s in seeds],
                                                conf)
    # the main metric per task, lora vs full (primary: the accuracy question), from the runs
    runs = {(r["task"], r["method"], r["seed"]): r for r in review["runs"]
            if r["status"] == "done"}
    for task in tasks:
        seeds = sorted(s for (t, m, s) in runs if (t, m) == (task, "lora")
                       and (task, "full", s) in runs)
        metric = runs[(task, "lora", seeds[0])]["main_metric"]
        out[f"ACC {task}"] = _paired(
            [runs[(task, "lora", s)]["metrics"][metric]["value"] for s in seeds],
            [runs[(task, "full", s)]["metrics"][metric]["value"] for s in seeds], conf)
    # Holm over the primary family as the report states it (its size is printed)
    keys = ["RQ1"] + [k for k in out if k.startswith(("RQ2", "ACC"))]
    for k, p_adj in zip(keys, _holm([out[k]["p"] for k in keys]), strict=True):
        out[k]["p_adj"] = p_adj
    out["_m"] = {"m": len(keys)}
    return out


# ----------------------------------------------------------------------------- the answers


def test_every_number_in_the_answers_is_recomputed_from_the_tables(review):
    spec = review["spec"]
    answers = _section(review["plain"], "Answers")
    rec = _primary(review)
    m = rec["_m"]["m"]
    alpha = spec.stats.alpha
    allowed: set[str] = set()

    def shown(*texts: str) -> None:
        for t in texts:
            assert t in answers, t
            allowed.update(NUMBER.findall(t))

    # RQ1: the across-task estimate, its interval, its corrected p and n, from the drift table
    r = rec["RQ1"]
    shown(f"{f.similarity(r['diff'])} {f.interval(r['lo'], r['hi'], f.similarity)} (95% CI)",
          f"Holm-corrected p {f.p_eq(r['p_adj'])} in the primary family of {m}",
          f"n = {r['n']} pairs of learned runs over {r['n_tasks']} task(s), 3 seeds")
    for task in ("sst2", "mrpc", "rte"):
        t = rec[f"RQ1 {task}"]
        shown(f"{task} {f.similarity(t['diff'])} {f.interval(t['lo'], t['hi'], f.similarity)} ")
    # its scope: these tasks only, and each method's learning rate from the run configs
    rates: dict[str, dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    for run in review["runs"]:
        lr = run["config"]["training"]["learning_rate"]
        if run["task"] not in rates[run["method"]][lr]:
            rates[run["method"]][lr].append(run["task"])
    assert rates["lora"][QS_RATES[("mrpc", "lora")]] == ["mrpc"]  # the sample's override
    shown("'across tasks' covers the 3 task(s) with pairs of learned runs only (sst2, mrpc, rte)",
          "full 9.4e-05 on every task; lora 3.4e-04 on sst2, rte and 9.4e-04 on mrpc")
    # RQ2 per declared pair: each task's relative change with its interval, from the bench table
    for pair in ("unmerged_vs_merged", "merged_vs_full"):
        line = next(x for x in answers.splitlines()
                    if x.startswith("**lora unmerged vs lora merged**" if pair.startswith("un")
                                    else "**lora merged vs full**"))
        for task in ("sst2", "mrpc", "rte"):
            c = rec[f"RQ2 {pair} {task}"]
            rel = f"{f.pct(c['rel'])} {f.interval(c['rel_lo'], c['rel_hi'], f.pct)}"
            if f"{task} ({rel})" in line:
                allowed.update(NUMBER.findall(rel))
            else:  # three tasks of one outcome: their range and the span of their intervals
                group = [rec[f"RQ2 {pair} {t}"] for t in ("sst2", "mrpc", "rte")]
                span = (f"{f.pct(min(g['rel'] for g in group))} to "
                        f"{f.pct(max(g['rel'] for g in group))} (intervals within "
                        f"[{f.pct(min(g['rel_lo'] for g in group))}, "
                        f"{f.pct(max(g['rel_hi'] for g in group))}])")
                assert span in line, (task, line)
                allowed.update(NUMBER.findall(span))
            # what each inconclusive test could detect: its own task's figure, not another's
            mde = _mde(c["n"], alpha / m, spec.stats.power)
            seeds = _seeds_needed(c["dz"], alpha / m, spec.stats.power)
            if c["p_adj"] >= alpha:  # not different: the line says what it could detect
                one = f"could detect |d_z| ≥ {f.stat(mde)} (about {f.ms(mde * c['sd'])} ms)"
                mine = f"{f.ms(mde * c['sd'])} ms on {task}"
                assert (f"could detect |d_z| ≥ {f.stat(mde)} (about" in line
                        and (mine in line or f"{one}; the observed effect needs {seeds} seeds"
                             in line)), (task, mine, line)
                allowed.update(NUMBER.findall(one) + [str(seeds)])
    # an unadjusted interval excluding 0 beside an outcome that is not 'different' is explained
    odd = [c for k, c in rec.items() if k.startswith("RQ2") and c["p_adj"] >= alpha
           and (c["lo"] > 0 or c["hi"] < 0)]
    assert odd  # the sample has such a case (RTE unmerged vs merged)
    shown(f"Intervals: 95%, unadjusted; outcomes: Holm-corrected p in the primary family of {m}")
    # the compute-only floor: the adapter's share of the FLOPs, from the bench table
    shares = sorted({r["flops"]["adapter_share"] for r in review["bench_rows"]
                     if r["mode"] == "unmerged"})
    shown(f"the adapter adds {f.share(shares[0])}")
    # nothing else: every number printed is one of these, the spec's or a label's
    allowed |= {"0", "1", "2", "3", "95%", "3.0%"} | {str(x) for x in spec.seeds}
    for line in answers.splitlines():
        if line.startswith("*Figure"):
            continue
        for number in NUMBER.findall(line):
            assert number in allowed, (number, line)


# ----------------------------------------------------------------------------- trust panel


def test_every_number_in_the_trust_panel_is_recomputed_from_the_tables(review):
    spec = review["spec"]
    trust = _section(review["plain"], "Can these answers be trusted?")
    runs = [r for r in review["runs"] if r["status"] == "done"]
    # learned: the lower bound of the main metric's interval above every baseline
    learned = {}
    for r in runs:
        metric = r["main_metric"]
        floor, *_ = _baseline_floor(review, r["task"], metric)
        learned[r["run_id"]] = r["metrics"][metric]["ci_low"] > floor
    per_task = ", ".join(
        f"{t} {sum(learned[r['run_id']] for r in runs if r['task'] == t)} of "
        f"{sum(r['task'] == t for r in runs)}" for t in ("sst2", "mrpc", "rte"))
    assert f"**Runs that learned:** {sum(learned.values())} of {len(runs)} finished runs" in trust
    assert per_task in trust
    # every run's row: its metric and interval, the baselines, the verdict and the short why
    table = next(t for t in _tables(trust) if t[0][0] == "Run")
    assert len(table) == 1 + len(runs)
    by_id = {r["run_id"]: r for r in runs}
    for row in table[1:]:
        r = by_id[row[0]]
        metric = r["main_metric"]
        m = r["metrics"][metric]
        floor, majority, chance, head = _baseline_floor(review, r["task"], metric)
        assert row[4] == (f"{metric} {f.metric(m['value'])} "
                          f"{f.interval(m['ci_low'], m['ci_high'], f.metric)}")
        assert row[5:8] == [f.metric(majority), f.metric(chance), f.metric(head)]
        assert row[8] == ("yes" if learned[r["run_id"]] else "DEGENERATE")
        assert row[9] == f"clears {f.metric(floor)} by {f.metric(m['ci_low'] - floor)}"
        assert len(row[9]) < 60  # short: the reason in full is folded below
    assert "<details><summary>Why, in full (18 runs)</summary>" in trust
    # what the tests could detect, recomputed with the noncentral t
    rec = _primary(review)
    m = rec["_m"]["m"]
    alpha, power = spec.stats.alpha, spec.stats.power
    mde3 = _mde(3, alpha / m, power)
    r1 = rec["RQ1"]
    mde_across = _mde(r1["n"], alpha / m, power, df=r1["df"])
    assert (f"primary family of {m} tested of {m} planned, Holm at alpha {alpha}; with 80% "
            f"power the tests detect |d_z| ≥ {f.stat(mde3)} (n = 3 seeds), |d_z| ≥ "
            f"{f.stat(mde_across)} (across tasks)") in trust
    power_table = next(t for t in _tables(trust) if t[0][0] == "Question")
    assert len(power_table) == 1 + m
    for row in power_table[1:]:
        question, where = row[0], row[1]
        if question == "RQ1":
            c, mde = rec["RQ1"], mde_across
            needed = f.text(None)
        elif question == "accuracy":
            c, mde = rec[f"ACC {where}"], mde3
            needed = str(_seeds_needed(c["dz"], alpha / m, power))
        else:
            pair = "unmerged_vs_merged" if "unmerged" in row[2] else "merged_vs_full"
            c, mde = rec[f"RQ2 {pair} {where.split(',')[0]}"], mde3
            needed = str(_seeds_needed(c["dz"], alpha / m, power))
        if needed != f.text(None):
            needed += " seeds"
        assert row[3] == f"{c['n']} {'pairs' if question == 'RQ1' else 'seeds'}"
        assert row[4] == f.pvalue(alpha / m) and row[5] == f.stat(mde)
        unit_fmt = f.ms if question == "RQ2" else f.metric
        assert row[6] == unit_fmt(mde * c["sd"])
        assert row[7] == f.stat(c["dz"])
        if question != "RQ1":
            assert row[8] == needed
        assert row[9] == ("different" if c["p_adj"] < alpha else "inconclusive")


# ----------------------------------------------------------------------------- what a reviewer flags


# (pattern, what a reviewer would object to), searched in the whole report as a reader sees it
FORBIDDEN = [
    (r"\b(fastest|slowest|cheapest|cheaper|wins?|winner|best choice|the better)\b",
     "a decision word: decisions come from tested comparisons only"),
    (r"\b\d+(\.\d+)?x (less|more|faster|slower|cheaper|smaller)\b", "an N-times claim"),
    (r"[+-]?\d{4,}(\.\d+)?%", "a percentage over a near-zero base"),
    (r"\bp = 0(\.0+)?(?![.\d])|\bp = <", "p = 0 or p = < x"),
    (r"\bLlama\b|byte-level BPE|whitespace token|causal LM head.*insufficient",
     "text about another model family"),
    (r"reads first pooling|which was not extracted", "a readout this head does not use"),
    (r"base vs run vs", "one label standing for two sides"),
    (r"framework cost", "an attribution that was not measured"),
    (r"each adapted weight matrix", "weight space claiming matrices it did not analyse"),
    (r"no search block", "search provenance stated as absent"),
    (r"latency per request|per request against|1 / latency|Requests/s at concurrency",
     "requests where the unit is a batch"),
    (r"Sweep over batch size and sequence length", "a sweep over one length"),
]


def test_no_sentence_a_reviewer_would_flag(review):
    plain = review["plain"]
    for pattern, why in FORBIDDEN:
        hit = re.search(pattern, plain)
        assert hit is None, f"{why}: {plain[max(0, hit.start() - 120):hit.end() + 120]!r}"
    alpha = review["spec"].stats.alpha
    tested = {c["outcome"] for c in review["stats"] if c.get("kind") == "comparison"}
    assert "different" in tested and "inconclusive" in tested  # both kinds are exercised
    for line in plain.splitlines():
        # "significant" only as "no significant difference", never beside a tested difference
        for m in re.finditer(r"\bsignificant(?! digits)", line):
            assert line[max(0, m.start() - 3):m.start()] == "no ", line
            assert line[m.start():].startswith("significant difference after correction"), line
        # "faster" / "slower than" only where a test found a difference
        if re.search(r"\b(faster|slower) than\b", line):
            assert "different" in line or "tested" in line, line
        # an unadjusted interval that excludes 0 beside a corrected 'no difference' says so
        if "no significant difference" in line:
            m = re.search(r"difference (-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]", line)
            if m and (float(m.group(2)) > 0 or float(m.group(3)) < 0):
                assert "excludes 0 but is unadjusted" in line, line
        # corrected p >= alpha never sits beside 'different' in one finding
        m = re.search(r"Holm-corrected p = (\d\.\d+)", line)
        if m and float(m.group(1)) >= alpha and line.startswith("- "):
            assert "**different**" not in line.split(". ")[0], line


def test_mixed_batches_are_marked_not_like_for_like_everywhere(review):
    plain = review["plain"]
    serving = [c for c in review["stats"] if c.get("area") == "serving"
               and c["kind"] == "comparison"]
    mixed = [c for c in serving if c["mode_a"] == "mixed"]
    multi = [c for c in serving if c["mode_a"] == "multi"]
    assert mixed and all(c["like_for_like"] is False and c["like_for_like_reason"]
                         for c in mixed)
    assert multi and all(c["like_for_like"] is True for c in multi)  # matched batch by batch
    # at batch 8 the reason says what differs: every task's rows, more padded tokens per call
    b8 = next(c for c in mixed if c["batch_size"] == 8)
    assert "holds rows of the 3 served tasks" in b8["like_for_like_reason"]
    assert b8["padded_tokens_per_call_a"] > b8["padded_tokens_per_call_b"]
    for line in plain.splitlines():
        if "mixed-3" in line and "single adapter" in line:
            assert "not like for like" in line or "no: " in line, line
            assert "on the same batches" not in line and "same batches)" not in line, line
    # one label, one number: the single adapter is named by the calls it was timed on
    labels = {c["b"] for c in mixed} | {c["b"] for c in multi}
    assert all(("same batches" in x) != ("all its batches" in x) for x in labels)
    # a per-task median resting on a handful of calls is flagged
    decision = _section(plain, "Deployment decision")
    assert "4 per seed (few: < 10)" in decision
    findings = _section(plain, "Findings")
    assert "3 seeds (paired); 4 calls per seed (few)" in findings
    assert "each seed's median of sst2's calls rests on 4 timed calls (few: < 10)" in findings


def test_decisions_name_only_what_a_test_supports(review):
    decision = _section(review["plain"], "Deployment decision")
    table = next(t for t in _tables(decision) if t[0][0] == "Task")
    comps = {(c["task"], c["batch_size"], c["mode_a"], c["mode_b"]): c
             for c in review["stats"] if c.get("area") == "latency"
             and c["kind"] == "comparison"}
    for task, batch, _, means, _paired, verdict in table[1:]:
        # each way of serving: the mean over seeds of each run's median, from the bench table
        for way in means.split("; "):
            name, value, n = re.fullmatch(r"(.+) (\d+\.\d+) \(n = (\d+)\)", way).groups()
            method, _, mode = name.partition(" ")  # "lora unmerged"; "full" is its own mode
            mode = mode or name
            p50 = _p50(review, mode, task, method, int(batch))
            assert value == f.ms(np.mean(list(p50.values()))) and int(n) == len(p50), way
        for claim in re.findall(r"lora (\w+) is (?:slower|faster) than (lora \w+|full)",
                                verdict):
            mode_b = claim[1].split()[-1]
            c = comps[(task, int(batch), claim[0], mode_b)]
            assert c["outcome"] == "different", (task, batch, claim)
        if not any(comps[k]["outcome"] == "different" for k in comps
                   if k[:2] == (task, int(batch))):
            assert "no tested difference" in verdict and "not a ranking" in verdict
    # the load runs: counts and rules, no winner; mixed batching's missing rate is said
    line = next(x for x in decision.splitlines() if x.startswith("Serving under load:"))
    assert "byte counts, exact" in line and "not tested" in line
    assert "mixed uniform no rate sustained, skewed no rate sustained" in line
    # "sustained" follows the table's stated rule: achieved >= 0.9 x the realised arrival rate
    load = _section(review["plain"], "Serving under load")
    rows = next(t for t in _tables(load) if t[0][0] == "Pattern")
    head = rows[0]
    for row in rows[1:]:
        achieved = float(row[head.index("Achieved (req/s)")])
        realised = float(row[head.index("Realised arrival (req/s)")])
        assert (row[head.index("Sustained")] == "yes") == (achieved >= 0.9 * realised), row
    switch = next(r for r in rows[1:] if r[1] == "switch" and r[2] == "25.0")
    assert switch[head.index("Sustained")] == "yes" and float(switch[3]) < 25  # 16.5 of 17.5


def test_units_counts_and_percentiles_match_what_was_measured(review):
    deployment = _section(review["plain"], "Deployment")
    table = next(t for t in _tables(deployment) if "Timed calls (batches)" in t[0])
    head = table[0]
    for row in table[1:]:
        calls = int(row[head.index("Timed calls (batches)")])
        for q, need in (("p90", 10), ("p95", 20), ("p99", 100)):
            cell = row[head.index(q)]
            assert cell.startswith("too few") == (calls < need), (q, calls, cell)
        # examples per second: batch size / latency (not 1 / latency)
        bench = next(r for r in review["bench_rows"] if r["ok"] and r["latency"]["count"] == calls
                     and str(r["batch_size"]) == row[4] and r["mode"] == row[1])
        assert bench["throughput"]["requests_per_s"] > 0
    b8 = [r for r in review["bench_rows"] if r["ok"] and r["batch_size"] == 8]
    for r in b8:
        lat_s = np.sum(r["latencies_ms"]) / 1e3
        assert r["throughput"]["requests_per_s"] == pytest.approx(8 * len(r["latencies_ms"])
                                                                  / lat_s, rel=1e-3)
    assert "batch size / latency examples per second" in deployment
    assert "### Sweep over batch size\n" in review["plain"]  # one length ran
    assert "One sequence length ran (data" in deployment
    assert "is not measured here, so it is not attributed" in deployment


def test_sections_that_do_not_apply_say_so_in_one_line(review):
    plain = review["plain"]
    readout = _section(plain, "Readout sensitivity").strip()
    assert readout.startswith("**Not applicable:** the head reads mean-pooled embeddings")
    assert len([x for x in readout.splitlines() if x.strip()
                and not x.startswith("<a id=")]) == 1
    forgetting = _section(plain, "Forgetting")
    assert "**Held-out LM loss: not applicable** (minilm is an encoder" in forgetting
    assert not [r for r in review["stats"] if r.get("area") == "forgetting"
                and r.get("measure") == "lm_loss"]
    assert not [x for x in _section(plain, "Findings").splitlines()
                if "LM loss" in x or "lm_loss" in x]
    weights = _section(plain, "Weight space")
    assert ("Matrices analysed: full: query, value; lora: query, value (drift.weight_modules: "
            "query, value; lora adapts all-linear: its other adapted matrices are not "
            "analysed)") in weights
    search = _section(plain, "Hyperparameter search")
    assert "No search ran in this study" in search and "not recorded" in search


def test_relative_changes_over_a_near_zero_base_are_not_percentages(review):
    plain = review["plain"]
    near_zero = [c for c in review["stats"] if c.get("kind") == "comparison"
                 and c.get("rel_diff") is not None and c.get("diff_ci_low") is not None
                 and abs(c["mean_b"]) <= c["diff_ci_high"] - c["diff_ci_low"]]
    assert near_zero  # the forgetting changes sit near 0
    for c in near_zero:
        text = f"{f.pct(c['rel_diff'])} {f.interval(c['rel_diff_ci_low'], c['rel_diff_ci_high'], f.pct)}"
        assert text not in plain, text
    assert "not shown (reference near 0)" in _section(plain, "Findings")


def test_the_glossary_defines_every_statistic_the_report_uses(review):
    md = review["md"]
    anchors = set(re.findall(r'<a id="(glossary-[a-z0-9-]+)"></a>', md))
    links = re.findall(r"\]\(#(glossary-[a-z0-9-]+)\)", md)
    assert links and set(links) <= anchors  # every link lands on a definition
    assert len(links) == len(set(links))  # linked once: at first use
    for term in ("d-z", "mde", "tost", "holm-correction", "reml", "procrustes-distance",
                 "knn-overlap", "effective-rank", "energy-rank", "debiased-linear-cka",
                 "linear-cka-biased", "null-floor", "seed-to-seed", "bootstrap-interval",
                 "mixed-model", "p50-p90-p95-p99", "sustained"):
        assert f"glossary-{term}" in anchors, term
    glossary = _section(review["plain"], "Glossary")
    assert glossary.count("<details>") == 1  # folded


def test_figures_show_the_difference_and_only_what_is_drawn(review, monkeypatch):
    """Figure 1's left panel zooms to the estimates (CKA near 1), marking the far null floor at
    its edge; the forgetting figure's legend lists only tasks with a point."""
    from peftlab.stages.report import build_report
    from peftlab.stages.report import figures as figs

    seen = []
    original = figs.to_png

    def capture(fig):
        seen.append({"xlims": [ax.get_xlim() for ax in fig.axes],
                     "texts": [t.get_text() for ax in fig.axes for t in ax.texts],
                     "legend": [t.get_text() for ax in fig.axes if ax.get_legend()
                                for t in ax.get_legend().get_texts()]})
        return original(fig)

    monkeypatch.setattr(figs, "to_png", capture)
    store = Store(review["study"].output_dir, create=False)
    try:
        build_report(Context(study=review["study"], store=store, console=Console(quiet=True)))
    finally:
        store.close()
    forest = next(s for s in seen if "null floor (q95)" in s["legend"])
    lo, hi = forest["xlims"][0]
    assert hi - lo < 0.05 and lo > 0.9  # zoomed to CKA near 1, not 0..1
    assert any(t.startswith("\u25c2 null floor") for t in forest["texts"])
    forgetting = next(s for s in seen if any(t.startswith("tuned on") for t in s["legend"]))
    assert "tuned on sst2" not in forgetting["legend"]  # SST-2's runs have no probe point
    assert {"tuned on mrpc", "tuned on rte"} <= set(forgetting["legend"])
    assert "degenerate run" not in forgetting["legend"]  # none is
