"""The report built from a small fixed results store (no training): sections, numbers traced back
to the store, escaping, well-formed self-contained HTML, figures.

    .venv/bin/python -m pytest tests/test_report.py -q

The store is `peftlab.sample_study` (see tests/test_analysis.py). When Chromium is installed,
one test renders report.html headless and checks the browser sees every figure.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as sst

from peftlab.sample_study import SCRIPT, write_sample
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import run as report_stage
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.study import Context

SECTIONS = ["How to read this report", "Summary of findings", "Runs", "Accuracy",
            "Representational drift", "Weight space", "Deployment", "Deployment decision",
            "Data", "Environment and provenance"]
SUBSECTIONS = ["Correctness gate", "Latency distributions", "Percentiles and throughput",
               "Sweep over batch size and sequence length",
               "Unmerged overhead and its compute floor", "Memory", "Load times", "Storage"]
# A number as printed: optional sign, digits, optional decimals and percent sign; not part of a
# word (the 2 of "sst2") or of a longer number.
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?(?![\w])")


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


def _section(md: str, title: str) -> str:
    """The Markdown of one section (## or ###), up to the next heading of the same level."""
    m = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(2)


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


def test_report_has_every_section_and_names_every_run(built):
    md, html = built["md"], built["html"]
    for title in SECTIONS:
        assert re.search(rf"^## {re.escape(title)}$", md, flags=re.M), title
        assert f">{title}</h2>" in html, title
    for title in SUBSECTIONS:
        assert re.search(rf"^### {re.escape(title)}$", md, flags=re.M), title
    for run in built["runs"]:
        assert run["run_id"] in md
    assert "insufficient runs" in _section(md, "Summary of findings")
    assert "Not measured" not in md  # the sample has every table


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
            assert cell == f"s{seed}: {m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


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
        out.add(f"{round(100 * value)}%")  # confidence levels: "95% CI"
    elif isinstance(value, str) and value.isdigit():
        out.add(value)  # seeds as keys of `missing`
    return out


def test_every_number_in_the_findings_is_in_the_stats_table(built):
    summary = _section(built["md"], "Summary of findings")
    comparisons = [r for r in built["stats"] if r["kind"] == "comparison"]
    settings = next(r for r in built["stats"] if r["kind"] == "settings")
    bullets = [line[2:] for line in summary.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 10
    for bullet in bullets:
        # the one comparison a finding is about: where it was made, its two sides, its quantity
        matches = [c for c in comparisons
                   if bullet.startswith(f.md_text(fnd.where(c)) + ": ")
                   and all(f.md_text(x) in bullet for x in (fnd.name(c, "a"), fnd.name(c, "b"),
                                                             fnd.quantity(c)))]
        assert len(matches) == 1, bullet
        c = matches[0]
        assert c["outcome"].split()[0] in bullet  # phrased from its stored outcome
        allowed = (_printed_forms(c) | _printed_forms(list(c.get("missing", {})))
                   | _printed_forms(settings))
        for number in NUMBER.findall(bullet):
            assert number in allowed, (number, bullet)
    counts = re.search(r"(\d+) comparisons: (\d+) significant, (\d+) equivalent, "
                       r"(\d+) inconclusive, (\d+) insufficient runs", summary)
    assert counts and int(counts.group(1)) == len(comparisons)
    for i, outcome in enumerate(("significant", "equivalent", "inconclusive",
                                 "insufficient runs"), start=2):
        assert int(counts.group(i)) == sum(c["outcome"] == outcome for c in comparisons)


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


def test_figures_are_embedded_pngs(built):
    root = ET.fromstring(built["html"].removeprefix("<!DOCTYPE html>"))
    images = list(root.iter("img"))
    captions = re.findall(r"^\*Figure (\d+) \(in report\.html\)", built["md"], flags=re.M)
    # accuracy + 2 drift tasks + 3 ECDFs (sst2, mrpc, multi/mixed) + sweep
    assert len(images) == len(captions) == 7
    for img in images:
        data = base64.b64decode(img.get("src").split(",", 1)[1], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        assert img.get("alt")


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
    assert "Accuracy" in md and not list(study.output_dir.glob("*.tmp-*"))


def test_chromium_renders_the_figures(built):
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    if chromium is None:
        pytest.skip("Chromium is not installed: headless rendering of report.html not checked")
    page = built["study"].output_dir / "report.html"
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert len(re.findall(r'<img src="data:image/png;base64,', out)) == 7
    assert "Summary of findings" in out
