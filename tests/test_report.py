"""The report built from a small fixed results store (no training): the answers first, the trust
panel, numbers traced back to the store, every measure with its floor, escaping, well-formed
self-contained HTML, figures, and (with Chromium) the first screen at 1280 x 800.

    .venv/bin/python -m pytest tests/test_report.py -q

The store is `peftlab.testing.sample_study` (see tests/test_analysis.py): every MRPC run and one RTE run
learned nothing. When Chromium is installed, one test renders report.html headless, saves a
1280 x 800 screenshot and measures the layout with an injected probe: nothing wider than the
page, and both answers with their figures inside the first 800 px.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as sst

from peftlab.context import Context
from peftlab.measures import label as measure_label
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import run as report_stage
from peftlab.stages.report.document import FOLD_ROWS
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.testing.sample_study import SCRIPT, write_sample

FRONT = ["Answers", "Can these answers be trusted?"]
SECTIONS = ["Findings", "How to read this report", "Runs", "Accuracy",
            "Representational drift", "Weight space", "Forgetting", "Deployment",
            "Serving on an engine", "Methods and sweep cells: accuracy, drift and cost",
            "Deployment decision", "Data", "Environment and provenance", "Glossary"]
SUBSECTIONS = ["Primary endpoints", "Exploratory: drift", "Exploratory: seed noise",
               "Correctness gate", "Latency distributions", "Percentiles and throughput",
               "Sweep over batch size",  # one sequence length ran: the heading says only this
               "Unmerged overhead and its compute floor", "Memory", "Load times", "Storage"]
# A number as printed: optional sign, digits, optional decimals and percent sign; not part of a
# word (the 2 of "sst2") or of a longer number.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?(?![\w])")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars", "--window-size=1280,800"]


def _build(study) -> dict:
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage(ctx)
        report_stage(ctx)
        return {t: store.records(t) for t in ("runs", "stats", "drift", "bench")}
    finally:
        store.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    study = write_sample(tmp_path_factory.mktemp("report"))
    tables = _build(study)
    root = study.output_dir
    return {"study": study, "md": (root / "report.md").read_text(encoding="utf-8"),
            "html": (root / "report.html").read_text(encoding="utf-8"), **tables}


GLOSSARY_LINK = re.compile(r"\[([^\]]*)\]\(#glossary-[a-z0-9-]+\)")


def _plain(md: str) -> str:
    """Markdown with the glossary's links reduced to their text (markup, not content)."""
    return GLOSSARY_LINK.sub(r"\1", md)


def _section(md: str, title: str) -> str:
    """The Markdown of one section (## or ###), up to the next heading of the same level, with
    the glossary's links reduced to their text."""
    m = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return _plain(m.group(2))


def _tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table of a text: rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _comparisons(built) -> list[dict]:
    """The stored comparisons in the study's order (as the report lists them)."""
    return sorted((r for r in built["stats"] if r["kind"] in ("comparison", "across_tasks")),
                  key=lambda r: r["order"])


def test_report_answers_first_then_supports(built):
    md, html = built["md"], built["html"]
    order = [md.index(f"## {t}\n") for t in FRONT + ["Contents"] + SECTIONS]
    assert order == sorted(order)  # the answers and the trust panel come before the contents
    for title in FRONT + SECTIONS:
        assert f">{title}</h2>" in html, title
    for title in SUBSECTIONS:
        assert re.search(rf"^### {re.escape(title)}$", md, flags=re.M), title
    for run in built["runs"]:
        assert run["run_id"] in md
    answers = _section(md, "Answers")
    # each question with its outcome words and the primary estimate with its interval
    rq1 = next(c for c in _comparisons(built) if c.get("question") == "RQ1")
    assert f"**RQ1 · Does lora drift less than full?** — **{rq1['outcome']}**" in answers
    assert (f"{f.similarity(rq1['diff'])} "
            f"{f.interval(rq1['diff_ci_low'], rq1['diff_ci_high'], f.similarity)}") in answers
    assert f"primary family of {rq1['family_size']}" in answers
    assert "**RQ2 · What does each way of serving a PEFT adapter cost?**" in answers
    assert "Not measured" not in md  # the sample has every table


def test_the_trust_panel_flags_degenerate_runs_and_voids(built):
    trust = _section(built["md"], "Can these answers be trusted?")
    assert "10 of 17 finished runs" in trust and "mrpc 0 of 6" in trust
    assert "**void** — degenerate runs on mrpc" in trust
    rows = _tables(_section(built["md"], "Runs"))[0]
    flagged = [r[0] for r in rows[1:] if r[6] == "DEGENERATE"]
    assert len(flagged) == 7 and all(r.startswith(("mrpc-", "rte-lora-s2")) for r in flagged)
    drift = _section(built["md"], "Representational drift")
    assert "**mrpc:** every run with drift records is degenerate" in drift
    assert "7 degenerate run(s) are left out of the lines" in drift
    # the minimum detectable effect of every tested primary comparison, in d_z and in units
    power = next(t for t in _tables(trust) if t[0][0] == "Question")
    tested = [c for c in _comparisons(built) if c["role"] == "primary" and c["status"] == "ok"]
    assert len(power) == 1 + len(tested)
    for row, c in zip(power[1:], tested, strict=True):
        assert row[5] == f.stat(c["mde_dz"]) and row[6] == fnd.value_format(c)(c["mde_diff"])


def test_accuracy_table_numbers_come_from_the_runs(built):
    rows = _tables(_section(built["md"], "Accuracy"))[0]
    assert rows[0][:5] == ["Task", "Method", "Metric", "n", "Mean"]
    runs = {(r["task"], r["method"], r["seed"]): r for r in built["runs"]
            if r["status"] == "done"}
    conf = 1 - built["study"].spec.stats.alpha
    assert len(rows) == 1 + 6
    for task, method, metric, n, mean, ci, per_seed in rows[1:]:
        seeds = sorted(s for (t, m, s) in runs if (t, m) == (task, method))
        values = np.array([runs[(task, method, s)]["metrics"][metric]["value"] for s in seeds])
        assert int(n) == len(seeds)
        assert mean == f"{values.mean():.4f}"
        half = sst.t.ppf(0.5 + conf / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(
            len(values))
        assert ci == f"[{values.mean() - half:.4f}, {values.mean() + half:.4f}]"
        cells = per_seed.split("; ")
        assert len(cells) == len(seeds)
        for seed, cell in zip(seeds, cells, strict=True):
            m = runs[(task, method, seed)]["metrics"][metric]
            assert cell.startswith(f"s{seed}: {m['value']:.4f} [{m['ci_low']:.4f}, "
                                   f"{m['ci_high']:.4f}]")
    # the baselines beside them: the majority-class rate of MRPC is the degenerate runs' F1
    base = _tables(_section(built["md"], "Accuracy"))[1]
    mrpc = next(r for r in base if r[0] == "mrpc")
    assert mrpc[4].startswith("0.8000") and "always 'equivalent'" in mrpc[4]


def _printed_forms(value) -> set[str]:
    """Every way the report may print a stored number (see peftlab.stages.report.format)."""
    out = set()
    if isinstance(value, dict):
        for v in value.values():
            out |= _printed_forms(v)
    elif isinstance(value, list):
        for v in value:
            out |= _printed_forms(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        for fmt in (f.metric, f.pvalue, f.stat, f.dof, f.ms, f.pct, f.share, f.integer):
            text = fmt(value)
            out |= {text, text.lstrip("+"), text.replace("< ", "")}
        out.add(f"{round(100 * value)}%")  # confidence levels: "95% CI", power "80%"
    elif isinstance(value, str):
        out |= {x for x in NUMBER.findall(value)}  # numbers inside stored text (reasons)
    return out


def test_every_number_in_the_findings_is_in_the_stats_table(built):
    findings = _section(built["md"], "Findings")
    comparisons = _comparisons(built)
    settings = next(r for r in built["stats"] if r["kind"] == "settings")
    bullets = [line[2:] for line in findings.splitlines() if line.startswith("- ")]
    tested = [b for b in bullets if not b.startswith(("**void**", "**insufficient runs**"))]
    assert len(tested) >= 10
    for bullet in tested:
        # the one comparison a finding is about: where it was made, its sides, its quantity
        matches = [c for c in comparisons
                   if bullet.startswith(f.md_text(fnd.where(c)) + ": ")
                   and all(f.md_text(x) in bullet for x in (fnd.name(c, "a"), fnd.name(c, "b"),
                                                             fnd.quantity(c)))]
        assert len(matches) == 1, bullet
        c = matches[0]
        assert f"**{c['outcome']}**" in bullet  # phrased from its stored outcome
        allowed = (_printed_forms(c) | _printed_forms(list(c.get("missing", {})))
                   | _printed_forms(settings))
        for number in NUMBER.findall(bullet):
            assert number in allowed, (number, bullet)
        if c["outcome"] == "inconclusive":  # what the study could have detected
            assert f.md_text(f"|d_z| ≥ {f.stat(c['mde_dz'])}") in bullet
    counts = re.search(r"(\d+) comparisons: (\d+) different, (\d+) negligible, (\d+) equivalent, "
                       r"(\d+) inconclusive, (\d+) insufficient runs, (\d+) void", findings)
    assert counts and int(counts.group(1)) == len(comparisons)
    for i, outcome in enumerate(("different", "negligible", "equivalent", "inconclusive",
                                 "insufficient runs", "void"), start=2):
        assert int(counts.group(i)) == sum(c["outcome"] == outcome for c in comparisons)


def test_comparisons_not_tested_collapse_to_one_line_per_reason(built):
    findings = _section(built["md"], "Findings")
    untested = [c for c in _comparisons(built) if c["status"] != "ok"]
    lines = [line for line in findings.splitlines()
             if line.startswith(("- **void**", "- **insufficient runs**"))]
    reasons = {(c["family"], fnd.untested_key(c)) for c in untested}
    assert len(lines) == len(reasons) < len(untested) / 2
    total = sum(int(re.search(r": (\d+) comparisons?", line).group(1)) for line in lines)
    assert total == len(untested)


def test_every_measure_is_reported_with_its_floor_and_p(built):
    drift = _section(built["md"], "Representational drift")
    band_table = next(t for t in _tables(drift) if "Null floor (q95)" in t[0] and "Band (layers)"
                      in t[0])
    header = band_table[0]
    summaries = sorted((r for r in built["stats"] if r["kind"] == "summary"
                        and r["area"] == "drift"), key=lambda r: r["order"])
    assert len(band_table) == 1 + len(summaries)
    measures = {row[1] for row in band_table[1:]}
    assert measures == {measure_label(m) for m in ("linear_cka_debiased", "linear_cka",
                                                   "centered_cosine", "cosine", "procrustes",
                                                   "knn")}
    assert "uncentred cosine" in measures
    q95, null_mean, p = (header.index(h) for h in ("Null floor (q95)", "Null mean",
                                                    "Permutation p (max)"))
    for row, sm in zip(band_table[1:], summaries, strict=True):
        assert row[q95] == f.similarity(sm.get("null_q95"))  # the floor is the 95% quantile
        assert row[null_mean] == f.similarity(sm.get("null_mean"))
        assert row[p] == f.pvalue(sm.get("p_max"))
    biased = [r for r in band_table[1:] if r[1] == "linear CKA" and r[2].startswith("mean")
              and r[4] != "0"]  # tasks with learned runs
    assert biased and all(r[q95] != f.MISSING for r in biased)  # biased CKA beside its floor
    # layer 0 stands apart: its own band, never inside the others
    assert any(r[2] == "embeddings (0)" for r in band_table[1:])
    assert all("(0-" not in r[2] for r in band_table[1:])
    layer_table = next(t for t in _tables(drift) if "Probe bootstrap CI (mean bounds)" in t[0])
    assert len(layer_table) > 1


def test_long_tables_fold_in_html_and_stay_complete_in_markdown(built):
    html, md = built["html"], built["md"]
    root = ET.fromstring(html.removeprefix("<!DOCTYPE html>"))
    folded = [d for d in root.iter("details") if d.get("class") == "table-fold"]
    assert folded
    for d in folded:
        rows = list(d.iter("tr"))[1:]
        assert len(rows) > FOLD_ROWS
        summary = "".join(d.find("summary").itertext())
        assert summary.endswith(f"({len(rows)} rows)")
    # every long table sits inside a <details> (folded as a table, or inside a folded block
    # such as the per-layer values), except the Findings' tables, which are there to be scanned
    inside = {id(t) for d in root.iter("details") for t in d.iter("table")}
    for t in root.iter("table"):
        caption = "".join(t.find("caption").itertext()) if t.find("caption") is not None else ""
        if len(list(t.iter("tr"))) - 1 > FOLD_ROWS and "tested comparison(s)" not in caption:
            assert id(t) in inside, caption
    # report.md holds every row of every table
    html_rows = sum(len(list(t.iter("tr"))) - 1 for t in root.iter("table"))
    assert sum(len(t) - 1 for t in _tables(md)) == html_rows
    # the per-layer drift table (hundreds of rows in a real study) is folded in both renderings
    drift = _section(md, "Representational drift")
    assert re.search(r"<details><summary>Per-layer values \(\d+ rows", drift)


def test_html_is_well_formed_and_self_contained(built):
    html = built["html"]
    root = ET.fromstring(html.removeprefix("<!DOCTYPE html>"))  # raises if not well-formed
    assert root.tag == "html"
    assert "http://" not in html and "https://" not in html
    for el in root.iter():
        for attr in ("src", "href"):
            target = el.get(attr)
            if target is not None:
                assert target.startswith(("data:image/png;base64,", "#")), target
    assert not list(root.iter("script")) and not list(root.iter("link"))
    assert "@import" not in html and "url(" not in html  # nothing fetched from the CSS either


# RQ1 forest + RQ2 ratios + accuracy + 2 drift tasks (every MRPC run is degenerate: no learned
# run to draw) + 4 ECDFs (3 tasks, the multi-adapter group) + sweep + the learning-forgetting
# figure + 3 Pareto views (accuracy vs drift and cost, one per task)
FIGURES = 14


def test_figures_are_embedded_pngs(built):
    root = ET.fromstring(built["html"].removeprefix("<!DOCTYPE html>"))
    images = list(root.iter("img"))
    captions = re.findall(r"^\*Figure (\d+) \(in report\.html\)", built["md"], flags=re.M)
    assert len(images) == len(captions) == FIGURES
    for img in images:
        data = base64.b64decode(img.get("src").split(",", 1)[1], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert img.get("alt")
    assert [img.get("alt") for img in images[:2]] == ["RQ1 forest plot", "RQ2 latency ratios"]


def test_dataset_and_spec_text_is_escaped(built):
    md, html = built["md"], built["html"]
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert SCRIPT not in md  # Markdown renderers would run it
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    # a pipe in a label must not split the table cell
    data_rows = _tables(_section(md, "Data"))[0]
    assert all(len(r) == len(data_rows[0]) for r in data_rows)
    assert any("not\\_equivalent \\| x" in r[-1] for r in data_rows)


def test_sections_without_results_say_not_measured(tmp_path):
    study = write_sample(tmp_path)
    store = Store(study.output_dir)
    for table in ("drift", "weights", "bench"):
        store.replace_where(table, "", [])
    store.close()
    _build(study)
    md = (study.output_dir / "report.md").read_text(encoding="utf-8")
    for title in ("Representational drift", "Weight space", "Deployment",
                  "Deployment decision"):
        assert "**Not measured**" in _section(md, title), title
    answers = _section(md, "Answers")
    assert answers.count("— **not measured**") == 2  # neither question has its data
    assert "Accuracy" in md and not list(study.output_dir.glob("*.tmp-*"))


# A layout probe injected into a copy of report.html (the report itself has no script): with
# every <details> opened, the widest element and the page's scroll width, and where the two
# answers' texts and figures lie.
PROBE = """<script>
window.addEventListener('load', function () {
  function box(sel) { var el = document.querySelector(sel); if (!el) return null;
    var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, right: r.right}; }
  var first = {rq1_text: box('#rq1 .answer-text'), rq1_figure: box('#rq1 img'),
               rq2_text: box('#rq2 .answer-text'), rq2_figure: box('#rq2 img')};
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var widest = 0, what = '';
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > widest) { widest = r.right; what = el.tagName; } });
  var out = {first: first, widest: widest, widest_element: what,
             scroll_width: document.documentElement.scrollWidth, width: window.innerWidth};
  var pre = document.createElement('pre'); pre.id = 'layout-probe';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _chromium():
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(n)), None)
    if found is None:
        pytest.skip("Chromium is not installed: headless rendering of report.html not checked")
    return found


def test_chromium_first_screen_answers_both_questions(built, tmp_path):
    chromium = _chromium()
    page = built["study"].output_dir / "report.html"
    shot = tmp_path / "first-screen.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120,
                   check=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 800)
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(built["html"].replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, flags=re.S)
    assert m, dom[-2000:]
    layout = json.loads(m.group(1))
    assert layout["width"] == 1280
    # nothing scrolls sideways, not even an opened table
    assert layout["scroll_width"] <= 1280 and layout["widest"] <= 1280, layout
    for name, b in layout["first"].items():
        assert b is not None, name
        assert b["bottom"] <= 800 and b["right"] <= 1280, (name, b)  # on the first screen
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == FIGURES


# -- the report asks the registries, not names -----------------------------------------------------


def test_a_section_added_to_the_one_list_appears_where_it_is_listed(built, monkeypatch):
    from peftlab.stages.report import build_report, sections
    from peftlab.stages.report.document import Paragraph, Section

    def extra(res):
        return Section("Extra", "extra").add(Paragraph.of(f"{len(res.view.tasks)} tasks"))

    listed = [fn.__name__ for fn in sections.SECTIONS]
    monkeypatch.setattr(sections, "SECTIONS", [*sections.SECTIONS[:2], extra,
                                               *sections.SECTIONS[2:]])
    store = Store(built["study"].output_dir, create=False)
    try:
        doc = build_report(Context(study=built["study"], store=store,
                                   console=Console(quiet=True)))
    finally:
        store.close()
    # the listed sections, the extra one, and the glossary appended last
    assert len(doc.sections) == len(listed) + 2 and doc.sections[2].title == "Extra"
    assert doc.sections[-1].title == "Glossary"
    assert doc.sections[2].blocks[0].spans == ["3 tasks"]
    assert [s.title for s in doc.front] == FRONT


def _bench_row(mode, seed, ms, task="sst2"):
    return {"ok": True, "mode": mode, "task": task, "method": "lora", "seed": seed,
            "batch_size": 1, "seq_len": "data", "p50_ms": ms}


def test_the_fast_path_table_follows_the_modes_declarations():
    from peftlab.bench.mode import MODES, Comparison, Mode
    from peftlab.stages.report.serving import fast_path_ratios

    class Live(Mode):
        """A plug-in live-adapter mode with a fast path, measured against merged."""

        name = "live"
        order = 25
        fast_path = True
        comparisons = (Comparison("merged", "same"),)

    rows = [_bench_row("merged", 1, 10.0), _bench_row("live", 1, 20.0),
            _bench_row("live+fast", 1, 12.0)]
    assert fast_path_ratios(rows) == []  # "live" is no registered mode: nothing to say
    with MODES.temporarily(Live):
        (got,) = fast_path_ratios(rows)
        assert (got["mode"], got["reference"]) == ("live", "merged")
        assert got["eager"] == pytest.approx(2.0) and got["fast"] == pytest.approx(1.2)
        # without a declared comparison with a mode that folds the adapter: no reference
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Live, "comparisons", (Comparison("full", "full"),))
            assert fast_path_ratios(rows) == []


def test_the_compute_floor_and_served_labels_follow_the_modes_declarations():
    from peftlab.bench.mode import MODES
    from peftlab.bench.modes.full import Full
    from peftlab.bench.modes.merged import Merged
    from peftlab.stages.report.decision import served

    class Folded(Merged):
        name = "folded"
        order = 36

    class FullAgain(Full):
        name = "full_again"
        order = 11

    c = {"area": "latency", "mode_a": "unmerged", "mode_b": "folded", "flops_share": 0.01}
    assert fnd.context_text(c) == ""  # not registered: no claim about its compute
    with MODES.temporarily(Folded):  # declares folds_adapter (inherited from merged)
        assert "compute floor" in fnd.context_text(c)
    assert "compute floor" not in fnd.context_text({**c, "mode_b": "full"})
    # a fully fine-tuned model is named by its method while one mode serves full models
    assert served({"method": "ft", "mode": "full"}) == "ft"
    assert served({"method": "lora", "mode": "merged"}) == "lora merged"
    with MODES.temporarily(FullAgain):
        assert served({"method": "ft", "mode": "full"}) == "ft full"


def test_runs_that_did_not_improve_on_their_start_are_counted_and_flagged():
    """The trust panel's count of runs that improved on their start, and the clause the answers
    add to a comparison between methods whose runs did not all improve."""
    from types import SimpleNamespace

    from peftlab.stages.report.answers import _start_note
    from peftlab.stages.report.trust import start_clause, start_line

    changes = {("sst2", "full"): ["worse", "worse", "no detectable change"],
               ("sst2", "lora"): ["no detectable change"] * 3,
               ("mrpc", "full"): ["improved"] * 3, ("mrpc", "lora"): ["improved"] * 3,
               ("rte", "full"): ["improved", "worse", "no detectable change"],
               ("rte", "lora"): ["improved"] * 3}
    verdicts = {(t, m, s): {"task": t, "method": m, "seed": s, "change": c}
                for (t, m), cs in changes.items() for s, c in enumerate(cs)}
    flat = [c for cs in changes.values() for c in cs]
    res = SimpleNamespace(
        verdicts=verdicts, view=SimpleNamespace(tasks=["sst2", "mrpc", "rte"],
                                                methods={"full": "full", "lora": "lora"}),
        settings={"runs": {"start_judged": 18, "improved": flat.count("improved"),
                           "worse": flat.count("worse"),
                           "no_detectable_change": flat.count("no detectable change")}},
        spec=SimpleNamespace(stats=SimpleNamespace(alpha=0.05)))
    assert start_clause(res, "sst2", ["lora", "full"]) == (
        "on sst2 neither method improved on its probe-fitted start")
    assert start_clause(res, "rte", ["lora", "full"]) == (
        "on rte full improved on its probe-fitted start in 1 of 3 runs")
    assert start_clause(res, "mrpc", ["lora", "full"]) is None
    line = "".join(start_line(res).spans)
    assert "10 of 18 improved on their start; 3 ended below it (5 no detectable change)" in line
    assert "sst2 full 0 of 3, lora 0 of 3; mrpc full 3 of 3, lora 3 of 3; rte full 1 of 3" in line
    assert "No run improved on its start on sst2; only some did on rte" in line
    across = {"kind": "across_tasks", "method_a": "lora", "method_b": "full",
              "tasks": ["sst2", "mrpc", "rte"]}
    assert _start_note(res, across) == (
        "on sst2 neither method improved on its probe-fitted start; on rte full improved on "
        "its probe-fitted start in 1 of 3 runs")
    assert _start_note(res, {"task": "mrpc", "method_a": "lora", "method_b": "full"}) is None
    # no run with a judged start: no line at all
    res.settings = {"runs": {"start_judged": 0}}
    assert start_line(res) is None


def test_rq1_scope_names_only_the_tasks_the_across_task_estimate_rests_on():
    """A study where one task learned: 'across tasks' is that task's estimate, the tasks whose
    runs did not learn are named as adding nothing, and searched rates print at 4 digits."""
    from types import SimpleNamespace

    from peftlab.stages.report.answers import rq1_scope
    from peftlab.stages.report.document import _md_block

    rates = {"full": 9.402060696595746e-05, "lora": 1.0297234506137483e-03}
    records = {(t, m, s): {"config": {"training": {"learning_rate": rates[m]}}}
               for t in ("sst2", "mrpc", "rte") for m in rates for s in (0, 1, 2)}
    res = SimpleNamespace(view=SimpleNamespace(tasks=["sst2", "mrpc", "rte"],
                                               methods=["full", "lora"], records=records))
    comps = [{"kind": "across_tasks", "tasks": ["sst2"], "tasks_without_pairs": ["mrpc", "rte"]}]
    text = _md_block(rq1_scope(res, comps))
    assert ("'across tasks' covers the 1 task(s) with pairs of learned runs only (sst2), not "
            "tasks in general (with one task the across-task estimate is sst2's own); mrpc, rte "
            "add(s) nothing to it") in text
    assert "full 9.402e-05 on every task; lora 1.03e-03 on every task" in text
