"""Readout sensitivity: does a drift verdict hang on which token's hidden state is pooled?

A study that extracts several poolings (`represent.pooling: [last, mean]`) has every drift
comparison made under each of them (drift and stats stages). The pooling the classification head
reads is primary; the others are exploratory (family exploratory/readout). This module shows:

- the pooled-token diagnostic per task (`readout` table, `records.ReadoutRecord`): under `last`
  or `first` pooling, the share of probes read at the same token id, the top tokens decoded, and a
  warning when one token covers most probes (a content-free position, like the space token that
  ends every unstripped SST-2 sentence for a byte-level BPE tokenizer);
- the per-layer and mean-over-layers drift of each method under every pooling side by side;
- every drift comparison whose direction or outcome word differs between poolings, and, for the
  RQ1 answer (`rq1_paragraphs`), a flag next to the primary verdict when that one does.

A study with one readout that reads no single token (mean pooling, e.g. the sentence-embedding
head, `head_reads`) gets one line saying the section does not apply.

Everything comes from stored records; `res` is the report's `stored.Results`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from peftlab.measures import label as measure_label
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Outcome, Paragraph, Section, Strong, Table
from peftlab.stages.report.stored import not_measured


def diagnostics(res: Any) -> list[dict[str, Any]]:
    """The study's `readout` records (pooled-token diagnostics), in task order, primary first."""
    from peftlab.records import ReadoutRecord, read

    order = {t: i for i, t in enumerate(res.view.tasks)}
    recs = [r.dump() for r in read(res.ctx.store, ReadoutRecord) if r.task in order]
    return sorted(recs, key=lambda r: (order[r["task"]], r["readout"] != "primary", r["pooling"]))


def poolings(res: Any) -> dict[str, Any]:
    """{poolings (primary first), primary, head} as the represent stage recorded them (the first
    task's base manifest), else as the drift and stats records name them; {} when neither
    exists."""
    head = head_reads(res)
    for task in res.view.tasks:
        man = res.ctx.store.get("represent", f"{task}/base")
        if man is not None:
            names = man.get("poolings") or [man["pooling"]]
            return {"poolings": names, "primary": names[0],
                    "head": head or man.get("head_pooling")}
    # no manifests (a study directory without representation files): the drift records'
    primary = next((r["pooling"] for r in res.drift if r.get("pooling")), None)
    if primary is None:
        return {}
    others = sorted({r["pooling"] for r in res.readouts if r.get("pooling")} - {primary})
    return {"poolings": [primary, *others], "primary": primary, "head": head}


def head_reads(res: Any) -> str | None:
    """The pooling the study's head reads when the spec decides it: "mean" for the
    sentence-embedding head (each text mean-pooled, `peftlab.sentence_embedding`), whatever the
    encoder's own classifier would read; None otherwise (the represent manifest says)."""
    return "mean" if getattr(res.spec.model, "head", None) == "sentence-embedding" else None


SINGLE_TOKEN = ("last", "first")  # the readouts that read one token's hidden state


def _direction(c: dict[str, Any]) -> int | None:
    """+1 / -1: the sign of a comparison's estimate (a minus b); None when there is none (void,
    or no values on a side) or it is exactly 0."""
    if c.get("outcome") == "void":
        return None
    diff = c.get("diff") if c.get("status") == "ok" else (
        c["mean_a"] - c["mean_b"] if c.get("mean_a") is not None
        and c.get("mean_b") is not None else None)
    if diff is None or diff == 0:
        return None
    return 1 if diff > 0 else -1


def disagreement(primary: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Why two readouts of one comparison disagree ([] when they agree): the outcome word
    differs, and/or the direction of the estimate is reversed."""
    why = []
    if primary["outcome"] != other["outcome"]:
        why.append(f"outcome {primary['outcome']} vs {other['outcome']}")
    a, b = _direction(primary), _direction(other)
    if a is not None and b is not None and a != b:
        # an untested comparison has means but no estimate: say so rather than imply a test
        tested = primary.get("status") == "ok" and other.get("status") == "ok"
        why.append("direction reversed" if tested else "means in opposite directions "
                   "(not tested)")
    return why


def counterparts(res: Any) -> list[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    """(primary comparison, the same comparison under an exploratory pooling, disagreement) for
    every drift and seed-noise comparison that has an exploratory counterpart, in report order."""
    others: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in res.readouts:
        if c.get("kind") in ("comparison", "across_tasks") and c.get("primary_key"):
            others[c["primary_key"]].append(c)
    out = []
    for c in res.comparisons:
        for o in others.get(c.get("key", ""), []):
            out.append((c, o, disagreement(c, o)))
    return out


def _estimate(c: dict[str, Any]) -> str:
    fmt = fnd.value_format(c)
    if c.get("status") != "ok":
        return c["outcome"]
    return (f"{fmt(c.get('diff'))} "
            f"{f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}")


def _token(t: dict[str, Any]) -> str:
    """A pooled token for a table cell: its tokenizer piece and, when it differs, its text."""
    piece, text = repr(t["token"]), repr(t["text"])
    return piece if piece == text else f"{piece} = {text}"


def warning_paragraph(d: dict[str, Any]) -> Paragraph:
    """The warning of one diagnostic whose top token covers most probes."""
    diag = d["diagnostic"]
    top = diag["top"][0]
    kind = {"whitespace": "a whitespace token", "punctuation": "a punctuation token",
            "content": "one content token"}[top["kind"]]
    if top.get("special"):
        kind += " (a special token)"
    strip = "" if d.get("strip_whitespace", True) else " (data.strip_whitespace: false)"
    return Paragraph.of(
        Strong("Readout warning:"),
        f" on {d['task']}, {d['pooling']} pooling ({d['readout']}) reads {kind}, "
        f"{_token(top)}, for {top['count']} of {diag['n']} probes ({f.share(diag['top_share'])}"
        f", above the {f.share(diag['warn_share'])} threshold){strip}. Those probes are read "
        "at one and the same token, so their vectors differ only through attention to the rest "
        "of the text, and drift at that position may say little about the sentences.")


def rq1_paragraphs(res: Any, comps: list[dict[str, Any]]) -> list[Paragraph]:
    """Next to the RQ1 verdict: whether each primary comparison reads the same under the
    exploratory poolings (a flag when its direction or outcome word differs), and any warning
    of the primary readout's pooled-token diagnostic. [] for a study with one readout."""
    keys = {c.get("key") for c in comps}
    pairs = [(c, o, why) for c, o, why in counterparts(res) if c.get("key") in keys]
    out = []
    for c, o, why in pairs:
        if not why:
            continue
        out.append(Paragraph.of(
            Strong("Depends on the readout:"),
            f" {fnd.where(c)}, {fnd.name(c, 'a')} \u2212 {fnd.name(c, 'b')} is ",
            Outcome(c["outcome"]), f" ({_estimate(c)}) under the primary {c.get('pooling')} "
            f"pooling but ", Outcome(o["outcome"]), f" ({_estimate(o)}) under {o['pooling']} "
            f"pooling (exploratory): {', '.join(why)}. See Readout sensitivity."))
    agree = sorted({o["pooling"] for c, o, why in pairs if not why})
    if pairs and not out:
        out.append(Paragraph.of(
            f"Readout: the primary verdict reads the same (direction and outcome) under "
            f"{', '.join(agree)} pooling (exploratory)."))
    out += [warning_paragraph(d) for d in diagnostics(res)
            if d["readout"] == "primary" and d["diagnostic"]["warn"]]
    return out


def readout_section(res: Any) -> Section:
    """Readout sensitivity: the pooled-token diagnostic, drift under every pooling side by
    side, and the comparisons whose conclusion changes with the pooling."""
    s = Section("Readout sensitivity", "readout")
    info = poolings(res)
    diags = diagnostics(res)
    if not info and not diags:
        return s.add(not_measured("representation manifests or drift records", "represent",
                                  "drift"))
    names = info.get("poolings") or []
    head = info.get("head")
    if len(names) == 1 and not diags and names[0] not in SINGLE_TOKEN:
        # nothing here applies: no single token's state is read, one readout only
        reads = (f"the head reads {head}-pooled embeddings" if head else
                 f"the drift records read {names[0]} pooling")
        model_head = (" (model.head: sentence-embedding)" if head_reads(res) else "")
        return s.add(Paragraph.of(
            Strong("Not applicable:"),
            f" {reads}{model_head}, every token averaged, so no single token's hidden state "
            f"decides the readout; the pooled-token diagnostic and the comparison of readouts "
            "concern last or first pooling."))
    if names:
        why = ("what the classification head reads" if head == names[0] else
               f"the first listed; the head reads {head} pooling, which was not extracted"
               if head else "the only one" if len(names) == 1 else
               "the primary readout of the drift records")
        rest = (f"; exploratory: {', '.join(names[1:])}, all from the same forward pass, "
                "compared in family exploratory/readout" if len(names) > 1 else
                "; set represent.pooling to a list (e.g. [last, mean]) to see others")
        s.add(Paragraph.of(Strong("Primary readout:"), f" {names[0]} pooling ({why}){rest}."))
    s.add(Paragraph.of("Text normalisation: ", res.ctx.data.normalisation()["rule"]))
    if diags:
        rows = []
        for d in diags:
            diag = d["diagnostic"]
            top = diag["top"][0]
            rows.append([d["task"], d["pooling"], d["readout"], _token(top), top["kind"],
                         f.share(diag["top_share"]), str(diag["distinct"]),
                         ", ".join(f"{_token(t)} {f.share(t['share'])}" for t in diag["top"][1:4])
                         or f.MISSING, "WARNING" if diag["warn"] else ""])
        s.add(Table(["Task", "Pooling", "Readout", "Top pooled token", "Kind", "Share of probes",
                     "Distinct tokens", "Next tokens", "Warning"], rows,
                    "Pooled-token diagnostic: which token id each single-token readout reads, "
                    "over the probe set (the tokens, not the weights, decide it: one row covers "
                    "the base and every run).",
                    numeric=[False, False, False, False, False, True, True, False, False]))
        s.add(*[warning_paragraph(d) for d in diags if d["diagnostic"]["warn"]])
    if len(names) > 1:
        _side_by_side(res, s, names)
        _disagreements(res, s)
    return s


def _side_by_side(res: Any, s: Section, names: list[str]) -> None:
    """Per task, method and layer: the primary drift measure to the base under every pooling,
    mean over the finished runs (and over transformer layers, layer 0 left out as in the
    stats stage's bands). Read from the drift records themselves, so a study whose runs did not
    learn (and whose stats summaries are therefore empty) still shows what each readout gives."""
    import numpy as np

    measure = res.spec.stats.primary.drift.measure if res.spec.stats.primary.drift else (
        "linear_cka_debiased")
    own = set(res.view.run_ids.values())
    cells: dict[tuple[str, str, Any], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    runs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in res.ctx.store.records("drift"):
        if r.get("kind") != "base_vs_run" or r.get("run_b") not in own:
            continue
        if measure not in (r.get("values") or {}):
            continue
        v = r["values"][measure]
        pooling = r.get("pooling") or names[0]
        cells[(r["task"], r["method"], r["layer"])].setdefault(pooling, [])
        if v is None:  # undefined on this layer (e.g. every probe pooled at one token)
            continue
        cells[(r["task"], r["method"], r["layer"])][pooling].append(float(v))
        if r["layer"] >= 1:
            cells[(r["task"], r["method"], "mean")][pooling].append(float(v))
        runs[(r["task"], r["method"])].add(r["run_b"])
    if not cells:
        return
    tasks = {t: i for i, t in enumerate(res.view.tasks)}
    methods = {m: i for i, m in enumerate(res.view.methods)}

    def order(k: tuple[str, str, Any]) -> tuple[int, int, int]:
        return (tasks.get(k[0], len(tasks)), methods.get(k[1], len(methods)),
                10**6 if k[2] == "mean" else int(k[2]))

    rows = []
    for (task, method, layer), vals in sorted(cells.items(), key=lambda kv: order(kv[0])):
        rows.append([task, f"{method} ({len(runs[(task, method)])} runs)",
                     "mean over transformer layers" if layer == "mean" else str(layer)]
                    + [f.similarity(float(np.mean(vals[p]))) if vals.get(p) else
                       "undefined" if p in vals else f.MISSING for p in names])
    s.add(Table(["Task", "Method", "Layer", *[f"{p} ({'primary' if i == 0 else 'exploratory'})"
                                              for i, p in enumerate(names)]], rows,
                f"{measure_label(measure)} to the base model under each pooling: mean over the "
                "finished runs, degenerate ones included (the trust panel names them); layer 0 "
                "is the embeddings, left out of the mean over transformer layers; undefined: "
                "every probe has the same pooled vector there (CKA 0/0).",
                numeric=[False, False, False, *[True] * len(names)]))


def _disagreements(res: Any, s: Section) -> None:
    pairs = counterparts(res)
    if not pairs:
        s.add(Paragraph.of("No exploratory-readout comparisons are stored (run "
                           "`peftlab run SPEC --stages drift,stats,report`)."))
        return
    bad = [(c, o, why) for c, o, why in pairs if why]
    s.add(Paragraph.of(Strong("Agreement between poolings:"),
                       f" {len(pairs) - len(bad)} of {len(pairs)} drift comparisons reach the "
                       "same direction and outcome under every pooling."))
    if not bad:
        return
    s.add(Table(["Where", "Comparison", "Primary", "Outcome", "Other pooling", "Outcome",
                 "Differs in"],
                [[fnd.where(c), fnd.subject(c), f"{c.get('pooling')}: {_estimate(c)}",
                  c["outcome"], f"{o['pooling']}: {_estimate(o)}", o["outcome"], ", ".join(why)]
                 for c, o, why in bad],
                "Comparisons whose conclusion depends on the readout (primary vs exploratory "
                "pooling; estimates: a minus b with their intervals)."))
    s.add(Bullets([Paragraph.of(
        "An exploratory pooling is corrected in its own family (exploratory/readout); a "
        "difference here says the verdict depends on which position is read, not which "
        "reading is right.")]))
