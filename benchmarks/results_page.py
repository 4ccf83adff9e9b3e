"""python -m benchmarks.results_page STUDY_DIR [--out docs/results] [--peft lora-qv]

Publish a finished study of the original study's design (`smollm2-glue`, `tinyllama-glue`) from
its study directory, with no number typed by hand:

- OUT/<study name>/report.md: the study's report with its figures as PNG files in
  OUT/<study name>/figures/ (report.md in the study directory keeps them in report.html only);
- OUT/<study name>/spec.yaml: the spec the study ran;
- OUT/README.md: each finding of the original study (TinyLlama-1.1B, 3 seeds, an L4 GPU; the
  figures it reported are quoted as text below, the only numbers here not read from the study)
  beside the replication's outcome under each pooling the study extracted, with the estimate and
  its interval, "void" with the reason where the runs did not learn; then whether each task
  learned (each method's main metric over seeds beside the majority-class rate, the learning
  rate its runs trained with, the search's validation scores, the reason of each run that did
  not learn), then the study's wall time
  (the sum of its `stage_times` records over every session), machine (its provenance) and the
  peftlab commits its records were written at.

A finding the original stated as a difference holds where the replication's test is "different"
in the same direction, does not hold where it is different the other way or equivalent, and is
inconclusive at the replication's n otherwise; one stated as no difference holds where the
replication's outcome is equivalent or negligible, does not hold where it is different, and is
inconclusive otherwise (no difference shown, none excluded).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.measures import label as measure_label
from peftlab.stages.report import format as f


@dataclass(frozen=True)
class Finding:
    """One finding of the original study and where its replication lives in the stats table."""

    question: str
    task: str
    claim: str
    original: str  # as the original report states it (its numbers, quoted)
    expect: str  # "higher": PEFT above full; "lower"; "none": no difference
    area: str  # "drift" or "latency"
    measure: str | None = None  # drift measure (band "mean")
    pair: str | None = None  # latency comparison (batch 1, the data's lengths)


ORIGINAL = [
    Finding("RQ1", "sst2", "LoRA stays closer to the base than full fine-tuning (linear CKA, "
            "biased, as the original)", "0.359 vs 0.101 (+255%, p < 0.001)", "higher", "drift",
            measure="linear_cka"),
    Finding("RQ1", "mrpc", "LoRA stays closer to the base (linear CKA, biased)",
            "0.235 vs 0.223 (+5.5%, p = 0.025)", "higher", "drift", measure="linear_cka"),
    Finding("RQ1", "rte", "no difference in linear CKA (biased)", "0.399 vs 0.398 (no difference)",
            "none", "drift", measure="linear_cka"),
    Finding("RQ1", "sst2", "LoRA stays closer to the base (cosine)", "0.975 vs 0.774", "higher",
            "drift", measure="cosine"),
    Finding("RQ1", "sst2", "LoRA stays closer to the base (debiased linear CKA, peftlab's "
            "primary measure)", "not measured (biased CKA only)", "higher", "drift",
            measure="linear_cka_debiased"),
    Finding("RQ1", "mrpc", "LoRA stays closer to the base (debiased linear CKA)",
            "not measured (biased CKA only)", "higher", "drift", measure="linear_cka_debiased"),
    Finding("RQ1", "rte", "no difference (debiased linear CKA)", "not measured (biased CKA only)",
            "none", "drift", measure="linear_cka_debiased"),
    *[Finding("RQ2", t, "an unmerged adapter is slower than full fine-tuning (batch 1)",
              "+35.2% mean latency (35.17 vs 26.01 ms)", "higher", "latency",
              pair="unmerged_vs_full") for t in ("sst2", "mrpc", "rte")],
    *[Finding("RQ2", t, "a merged adapter serves as fast as full fine-tuning (batch 1)",
              "as fast as full fine-tuning", "none", "latency", pair="merged_vs_full")
      for t in ("sst2", "mrpc", "rte")],
]


def read_table(store: Any, table: str) -> list[dict[str, Any]]:
    return [dict(store.get(table, k), key=k) for k in store.keys(table)]


def find(stats: list[dict[str, Any]], finding: Finding, peft: str, pooling: str | None
         ) -> dict[str, Any] | None:
    """The stored comparison replicating `finding` for PEFT method `peft` (against full
    fine-tuning, "full") and drift pooling `pooling`."""
    for c in stats:
        if c.get("kind") != "comparison" or c.get("task") != finding.task:
            continue
        if finding.area == "drift":
            if (c.get("area") == "drift" and c.get("measure") == finding.measure
                    and c.get("band") == "mean" and c.get("pooling") == pooling
                    and c.get("method_a") == peft and c.get("method_b") == "full"):
                return c
        elif (c.get("area") == "latency" and c.get("pair") == finding.pair
              and c.get("method_a") == peft and c.get("batch_size") == 1
              and str(c.get("seq_len")) == "data"):
            return c
    return None


def verdict(finding: Finding, c: dict[str, Any] | None) -> tuple[str, str]:
    """(holds / does not hold / inconclusive / void / not measured, the estimate in words)."""
    if c is None:
        return "not measured", "no stored comparison"
    out = c["outcome"]
    if out in ("void", "insufficient runs"):
        return "void", c.get("reason") or out
    unit = " ms" if c.get("unit") == "ms" else ""
    est = (f"{f.metric(c.get('mean_a')) if not unit else f.ms(c.get('mean_a'))} vs "
           f"{f.metric(c.get('mean_b')) if not unit else f.ms(c.get('mean_b'))}{unit}; ")
    if unit and c.get("rel_diff") is not None:
        est += (f"{f.pct(c['rel_diff'])} [{f.pct(c.get('rel_diff_ci_low'))}, "
                f"{f.pct(c.get('rel_diff_ci_high'))}]")
    else:
        est += (f"{f.metric(c.get('diff'))} [{f.metric(c.get('diff_ci_low'))}, "
                f"{f.metric(c.get('diff_ci_high'))}]")
    est += f", n = {c['n']} {'blocks' if c.get('design') == 'paired' else 'seeds'}"
    if c.get("p_adjusted") is not None:
        est += f", corrected p {f.p_eq(c['p_adjusted'])}"
        if c.get("family") and c.get("family_size"):
            est += f" in the {c['family']} family of {c['family_size']}"
    sign = (c.get("diff") or 0) > 0
    if finding.expect == "none":
        word = {"equivalent": "holds", "negligible": "holds",
                "different": "does not hold"}.get(out, f"inconclusive at n = {c['n']}")
    else:
        want = finding.expect == "higher"
        word = ("holds" if out == "different" and sign == want else
                "does not hold (reversed)" if out == "different" else
                "does not hold" if out in ("equivalent", "negligible") else
                f"inconclusive at n = {c['n']}")
    return word, f"{out}: {est}"


def primary_lines(stats: list[dict[str, Any]], peft: str) -> list[str]:
    """peftlab's own primary RQ1 endpoint for `peft` (the report's Answers): the across-task
    estimate over the tasks with pairs of learned runs, corrected in the primary family. The
    table's per-task rows are corrected over the far larger exploratory drift family, so the
    same difference can be "different" here and "inconclusive" there; the page says both."""
    out = []
    for c in stats:
        if not (c.get("kind") == "across_tasks" and c.get("role") == "primary"
                and c.get("a") == peft):
            continue
        tasks = ", ".join(c.get("tasks") or []) or "none"
        if c["outcome"] in ("void", "insufficient runs"):
            result = f"**{c['outcome']}** ({c.get('reason') or 'not tested'})"
        else:
            result = (f"**{c['outcome']}**, {f.metric(c.get('diff'))} "
                      f"[{f.metric(c.get('diff_ci_low'))}, {f.metric(c.get('diff_ci_high'))}], "
                      f"n = {c['n']} pairs, corrected p {f.p_eq(c.get('p_adjusted'))} in the "
                      f"{c.get('family')} family of {c.get('family_size')}")
        out.append(f"peftlab's primary RQ1 endpoint (the report's Answers): {c['a']} minus "
                   f"{c['b']} in {measure_label(str(c.get('measure')))} to the base, "
                   f"{c.get('band')} over transformer layers, "
                   f"{c.get('pooling')} pooling, across the tasks with pairs of learned runs "
                   f"({tasks}): {result}. It is tested in the study's primary family; the "
                   "table's rows are the per-task comparisons, corrected in the exploratory "
                   "families, which hold many more tests.")
    return out


def poolings_of(stats: list[dict[str, Any]]) -> list[str | None]:
    """The poolings the stored drift comparisons were read under, the primary readout's first."""
    seen: dict[str | None, bool] = {}
    for c in stats:
        if c.get("area") == "drift" and c.get("kind") == "comparison":
            seen.setdefault(c.get("pooling"), c.get("readout", "primary") == "primary")
    return sorted(seen, key=lambda p: (not seen[p], str(p))) or [None]


def wall_time(store: Any) -> tuple[float, int]:
    """(seconds summed over every session's stage records, sessions)."""
    recs = read_table(store, "stage_times")
    return sum(r["seconds"] for r in recs), len({r["session"] for r in recs})


def record_commits(store: Any) -> dict[str, list[str]]:
    """peftlab commit (12 characters) -> the tables with records it wrote, from each record's
    provenance: a study resumed over several sessions can span commits, and the page says so."""
    commits: dict[str, set[str]] = {}
    for table in store.tables():
        if table == "meta":  # rewritten by every session: the last session's commit, said apart
            continue
        for rec in store.records(table):
            prov = rec.get("provenance") if isinstance(rec, dict) else None
            commit = prov.get("toolkit_commit") if isinstance(prov, dict) else None
            if commit:
                commits.setdefault(str(commit)[:12], set()).add(table)
    return {c: sorted(t) for c, t in commits.items()}


def learning_table(stats: list[dict[str, Any]], baselines: dict[str, dict[str, Any]],
                   runs: dict[str, dict[str, Any]], search: list[dict[str, Any]]
                   ) -> list[str]:
    """Did each task learn: per task x method, the main metric's mean over seeds with its
    interval, how many runs passed the learned rule, the majority-class rate, the rate the runs
    trained with and the search's trials; then each run that did not learn, with its reason
    (the evidence a void finding rests on)."""
    head = ["Task", "Method", "Main metric, mean over seeds [95% CI]", "Runs that learned",
            "Majority-class rate", "Learning rate", "Search trials (validation score)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    failed: list[str] = []
    summaries = sorted((c for c in stats if c.get("kind") == "summary"
                        and c.get("area") == "metric"),
                       key=lambda c: (c["task"], c["method"] != "full", c["method"]))
    for c in summaries:
        task, method, metric = c["task"], c["method"], c.get("metric")
        learned = c.get("learned") or {}
        maj = (((baselines.get(task) or {}).get("majority") or {}).get("metrics") or {}
               ).get(metric) or {}
        rates = sorted({(runs.get(r) or {}).get("config", {}).get("training", {})
                        .get("learning_rate") for r in c.get("run_ids") or []} - {None})
        # trial records only (the table also holds one summary per search); values: {objective: v}
        trials = [t for t in search if t["key"].startswith("trial/") and t.get("task") == task
                  and t.get("method") == method]
        scores = ", ".join(
            f"{f.sig(t['params'].get('learning_rate'))}: "
            + (f.metric(next(iter(t["values"].values()))) if t.get("values")
               else str(t.get("state")))
            for t in sorted(trials, key=lambda t: t.get("number", 0))
            if "learning_rate" in (t.get("params") or {})) or "no search"
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in [
            task, method,
            f"{metric} {f.metric(c.get('mean'))} [{f.metric(c.get('ci_low'))}, "
            f"{f.metric(c.get('ci_high'))}]",
            f"{sum(v is True for v in learned.values())} of {len(learned)}",
            f.metric(maj.get("value")) if maj else "not measured",
            ", ".join(f.sig(r) for r in rates) or "not recorded",
            scores]) + " |")
    for c in sorted((c for c in stats if c.get("kind") == "summary" and c.get("area") == "runs"
                     and c.get("learned") is False), key=lambda c: c.get("run_id", "")):
        failed.append(f"- `{c['run_id']}`: {f.md_text(str(c.get('reason') or 'no reason stored'))}")
    return lines + ([
        "", "Runs that did not learn, each with the stats stage's reason:", "", *failed] if failed else
        ["", "Every run learned (the stats stage's verdicts)."])


def findings_table(stats: list[dict[str, Any]], peft: str, poolings: list[str | None]
                   ) -> list[str]:
    head = ["Question", "Task", "Finding", "Original (TinyLlama-1.1B)"] + [
        f"Replication, {p} pooling" if p else "Replication" for p in poolings]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fd in ORIGINAL:
        cells = [fd.question, fd.task, fd.claim, fd.original]
        pools = poolings if fd.area == "drift" else poolings[:1]
        for p in pools:
            word, est = verdict(fd, find(stats, fd, peft, p))
            cells.append(f"**{word}** ({est})")
        cells += ["(latency does not depend on the pooling)"] * (len(poolings) - len(pools))
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--peft", default="lora-qv",
                    help="the PEFT method standing for the original's LoRA r=8 on q,v")
    args = ap.parse_args(argv)

    from peftlab.context import Context
    from peftlab.errors import PeftlabError
    from peftlab.pipeline import load_study
    from peftlab.stages.report import build_report
    from peftlab.stages.report.document import write_markdown_with_figures
    from peftlab.store import Store

    study_dir = args.study_dir.resolve()
    spec_path = study_dir / "spec.yaml"
    if not (study_dir / "results.sqlite").is_file() or not spec_path.is_file():
        print(f"error: {study_dir}: not a study directory (expected results.sqlite and "
              "spec.yaml in it)", file=sys.stderr)
        return 2
    try:
        study = load_study(spec_path, output_dir=str(study_dir))
    except PeftlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = Store(study_dir, create=False)
    try:
        stats = read_table(store, "stats")
        if not stats:
            print(f"error: {study_dir}: no stats table (run the stats stage first)",
                  file=sys.stderr)
            return 2
        methods = list(study.spec.methods)
        if args.peft not in methods or "full" not in methods:
            print(f"error: --peft {args.peft}: the study's methods are {methods}; the page "
                  "needs that PEFT method and 'full'", file=sys.stderr)
            return 2
        meta = store.get("meta", "study") or {}
        baselines = {k: store.get("baselines", k) for k in store.keys("baselines")}
        runs = {k: store.get("runs", k) for k in store.keys("runs")}
        search = read_table(store, "search") if "search" in store.tables() else []
        seconds, sessions = wall_time(store)
        commits = record_commits(store)
        out = args.out / study.spec.name
        out.mkdir(parents=True, exist_ok=True)
        doc = build_report(Context(study=study, store=store))
        write_markdown_with_figures(doc, out)
        shutil.copyfile(spec_path, out / "spec.yaml")
    finally:
        store.close()
    prov = meta.get("provenance") or {}
    poolings = poolings_of(stats)
    device = prov.get("device") or {}
    lines = [
        "# Published results",
        "",
        "Generated by `python -m benchmarks.results_page` from a study directory; every number "
        "of the replication is read from its stored results. The original's figures are quoted "
        "from its report (TinyLlama-1.1B, 3 seeds, an L4 GPU).",
        "",
        f"## {study.spec.name}: the original study's findings, replicated",
        "",
        f"Study: {f.md_text(study.spec.description.strip())} Report: [{study.spec.name}/report.md]"
        f"({study.spec.name}/report.md), spec: [{study.spec.name}/spec.yaml]"
        f"({study.spec.name}/spec.yaml). PEFT method set beside the original's LoRA: "
        f"`{args.peft}`; RQ1 on the mean over transformer layers.",
        "",
        *findings_table(stats, args.peft, poolings),
        "",
        *(line for text in primary_lines(stats, args.peft) for line in (text, "")),
        "### Did each task learn",
        "",
        *learning_table(stats, baselines, runs, search),
        "",
        (f"Wall time: {seconds / 3600:.2f} h ({seconds:.0f} s, the stages' recorded times "
         f"summed over {sessions} session(s))" if sessions else
         "Wall time: not recorded (no stage_times in the study directory)")
        + f"; machine: {device.get('cpu_count', '?')} CPU cores, "
        f"{device.get('platform', '?')}, torch threads {device.get('torch_threads', '?')}; "
        f"peftlab commit {str(prov.get('toolkit_commit', '?'))[:12]} (the last session's)"
        + ("; the stored records were written at " + ", ".join(
            f"{c} ({', '.join(t)})" for c, t in commits.items()) if commits else "") + ".",
        "",
        f"What differs from the original: the model ({study.spec.model.name} against "
        "TinyLlama-1.1B), the hardware (this machine against an L4 GPU: latencies compare as "
        "ratios, not in ms), the readout (the original pooled the last token with GLUE's "
        "trailing space kept, so the token it read was that space; "
        + ("here text is stripped" if study.spec.data.strip_whitespace else
           "here the space is kept too")
        + f" and the poolings read are {', '.join(str(p) for p in poolings)}), the measure (the "
        "original's linear CKA is biased towards 1 at small n; peftlab's primary measure is the "
        "debiased one, both are shown), the data (training subsets of "
        + ", ".join(f"{t.name} {t.train_samples or study.spec.data.train_samples or 'all'}"
                    f" x {t.training.get('epochs', study.spec.training.epochs):g} epochs"
                    for t in study.spec.tasks)
        + f") and the seeds ({len(study.spec.seeds)} here, 3 there).",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print(json.dumps({"readme": str(args.out / "README.md"), "report": str(out / "report.md"),
                      "wall_s": seconds, "sessions": sessions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
