"""The report as data (sections of paragraphs, tables, figures, code) and its two renderings.

Sections are built once and rendered twice, so report.md and report.html always say the same
thing. All text is plain text until rendering, where it is escaped for the target: Markdown
(`format.md_text`) or HTML (`html.escape`). The HTML is self-contained: CSS inline, figures as
base64 PNG data URIs, no script, no external URL; it is also well-formed XML (XHTML syntax), so
it can be checked with any XML parser.

Layout: the document's `front` sections (the answers and the trust panel) come first, before the
table of contents, so the first screen answers the research questions; an `Answer` block puts
its text beside its figure (a two-column grid in HTML). Tables longer than `FOLD_ROWS` rows fold
into a <details> element in HTML (report.md always holds every row), and the CSS lets every cell
wrap, so nothing is wider than the page at 1280 px. A `Details` block folds what a reader needs
only on demand (per-layer values, every finding's sentence) in both renderings: a <details>
element, which Markdown viewers such as GitHub's show folded too. A table's `notes` (one
paragraph per row, e.g. a finding in full) fold under each row in HTML and into one <details>
list after the table in Markdown. A `Link` span points at an anchor of the report (the glossary's
terms, `peftlab.stages.report.glossary`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

from peftlab.stages.report.format import html_text, md_line, md_text

FOLD_ROWS = 12  # HTML tables with more rows than this fold into <details>


class Strong(str):
    """A span of a paragraph shown in bold."""


class Outcome(str):
    """An outcome word (different, equivalent, ...) shown as a badge; bold in Markdown."""


class Link(str):
    """A span of a paragraph that links to an anchor of the report (`target`, without '#')."""

    target: str

    @classmethod
    def to(cls, text: str, target: str) -> Link:
        link = cls(text)
        link.target = target
        return link


@dataclass
class Paragraph:
    spans: list[str]  # plain text; Strong spans are bold

    @classmethod
    def of(cls, *spans: str) -> Paragraph:
        return cls(list(spans))


@dataclass
class Bullets:
    items: list[Paragraph]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] | None = None  # right-align these columns
    fold: bool | None = None  # HTML: fold into <details>; None: when longer than FOLD_ROWS
    # one paragraph per row (or None), folded: under its row in HTML, in a list after the
    # table in Markdown (e.g. each finding's full sentence)
    notes: list[Paragraph | None] | None = None
    notes_title: str = "In full"


@dataclass
class Figure:
    png: bytes
    alt: str
    caption: str
    number: int = 0
    file: str | None = None  # Markdown: a relative path the PNG was written to, linked there


@dataclass
class Code:
    text: str


@dataclass
class Definitions:
    """Terms and their definitions, each term with its own anchor (the glossary)."""

    items: list[tuple[str, str, Paragraph]]  # (term, anchor, definition)


@dataclass
class Details:
    """Blocks folded behind a one-line summary, in both renderings."""

    summary: str
    blocks: list[Block]


@dataclass
class Answer:
    """One research question answered: a heading line, the answer's paragraphs, its figure."""

    question: str  # "RQ1: does lora drift less than full fine-tuning?"
    outcome: list[str]  # the outcome words, shown above the text
    paragraphs: list[Paragraph]
    figure: Figure | None = None
    anchor: str = ""


Block = Paragraph | Bullets | Table | Figure | Code | Answer | Definitions | Details


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    def sub(self, title: str) -> Section:
        child = Section(title, f"{self.anchor}-{slug(title)}")
        self.subsections.append(child)
        return child


@dataclass
class Document:
    title: str
    intro: list[Block]
    sections: list[Section]
    front: list[Section] = field(default_factory=list)  # before the contents: the answers


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def number_figures(doc: Document) -> list[Figure]:
    """Give every figure its number in reading order; return them."""
    figures: list[Figure] = []

    def visit(blocks: list[Block]) -> None:
        for b in blocks:
            if isinstance(b, Details):
                visit(b.blocks)
                continue
            fig = b.figure if isinstance(b, Answer) else b
            if isinstance(fig, Figure):
                figures.append(fig)
                fig.number = len(figures)

    def walk(sections: list[Section]) -> None:
        for s in sections:
            visit(s.blocks)
            walk(s.subsections)

    walk(doc.front)
    walk(doc.sections)
    return figures


# ----------------------------------------------------------------------------- Markdown


def _md_span(s: str) -> str:
    if isinstance(s, (Strong, Outcome)):
        return f"**{md_text(s)}**"
    if isinstance(s, Link):
        return f"[{md_text(s)}](#{s.target})"
    return md_text(s)


def _md_spans(p: Paragraph) -> str:
    return md_line("".join(_md_span(s) for s in p.spans))


def _md_block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return _md_spans(b)
    if isinstance(b, Bullets):
        return "\n".join(f"- {_md_spans(p)}" for p in b.items)
    if isinstance(b, Table):
        numeric = b.numeric or [False] * len(b.header)
        lines = []
        if b.caption:
            lines += [f"*{md_text(b.caption)}*", ""]
        lines.append("| " + " | ".join(md_text(h) for h in b.header) + " |")
        lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
        lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in b.rows]
        notes = [n for n in (b.notes or []) if n is not None]
        if notes:
            lines += ["", f"<details><summary>{html_text(b.notes_title)} ({len(notes)})"
                      "</summary>", "", *[f"- {_md_spans(n)}" for n in notes], "", "</details>"]
        return "\n".join(lines)
    if isinstance(b, Figure):
        if b.file is not None:  # written beside the Markdown (`write_markdown_with_figures`)
            return (f"![{md_text(b.alt)}]({b.file})\n\n"
                    f"*Figure {b.number}: {md_text(b.caption)}*")
        # Markdown stays plain text: the figure itself is embedded in report.html only.
        return f"*Figure {b.number} (in report.html): {md_text(b.caption)}*"
    if isinstance(b, Code):
        # An HTML <pre> block rather than a fence: CommonMark passes it through, and its text
        # can be entity-escaped like every other text of the report (a fence shows entities
        # literally).
        return f"<pre><code>{html_text(b.text.rstrip())}</code></pre>"
    if isinstance(b, Definitions):
        return "\n".join(f'- <a id="{anchor}"></a>**{md_text(term)}**: {_md_spans(d)}'
                         for term, anchor, d in b.items)
    if isinstance(b, Details):
        inner = "\n\n".join(_md_block(x) for x in b.blocks)
        return (f"<details><summary>{html_text(b.summary)}</summary>\n\n{inner}\n\n"
                "</details>")
    if isinstance(b, Answer):
        lines = [f"**{md_text(b.question)}** — "
                 + ", ".join(f"**{md_text(o)}**" for o in b.outcome), ""]
        for p in b.paragraphs:
            lines += [_md_spans(p), ""]
        if b.figure is not None:
            lines.append(_md_block(b.figure))
        return "\n".join(lines).rstrip()
    raise TypeError(f"unknown block {type(b).__name__}")


def write_markdown_with_figures(doc: Document, out_dir: Path, name: str = "report.md",
                                figures_dir: str = "figures") -> Path:
    """Write `doc` as Markdown into out_dir/name with every figure as a PNG file in
    out_dir/figures_dir (figure-<n>.png), linked from the text: a report that renders on a code
    host, where report.html's embedded images do not. Returns the Markdown's path."""
    figs = number_figures(doc)
    (out_dir / figures_dir).mkdir(parents=True, exist_ok=True)
    for fig in figs:
        rel = f"{figures_dir}/figure-{fig.number}.png"
        (out_dir / rel).write_bytes(fig.png)
        fig.file = rel
    path = out_dir / name
    path.write_text(to_markdown(doc), encoding="utf-8")
    return path


def to_markdown(doc: Document) -> str:
    number_figures(doc)
    out = [f"# {md_text(doc.title)}", ""]
    out += [x for b in doc.intro for x in (_md_block(b), "")]

    def section(s: Section, level: int) -> None:
        out.extend([f'<a id="{s.anchor}"></a>', "", f"{'#' * level} {md_text(s.title)}", ""])
        for b in s.blocks:
            out.extend([_md_block(b), ""])
        for child in s.subsections:
            section(child, level + 1)

    for s in doc.front:
        section(s, 2)
    out += ["## Contents", ""]
    out += [f"- [{md_text(s.title)}](#{s.anchor})" for s in doc.sections] + [""]

    for s in doc.sections:
        section(s, 2)
    return "\n".join(out).rstrip() + "\n"


def section_markdown(s: Section, level: int = 2) -> str:
    """One section (and its subsections) as Markdown, headed at `level`: for reports written
    as Markdown lines rather than a Document (a generation study's). Figures are linked where
    their `file` is set, else named as in report.html."""
    out = [f'<a id="{s.anchor}"></a>', "", f"{'#' * level} {md_text(s.title)}", ""]
    for b in s.blocks:
        out.extend([_md_block(b), ""])
    for child in s.subsections:
        out.append(section_markdown(child, level + 1))
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1180px; margin: .6rem auto 2rem; padding: 0 1rem; color: #1f2328;
       line-height: 1.4; font-size: 15px; }
h1 { font-size: 1.45rem; margin: .2rem 0 .1rem; }
p.meta { margin: 0 0 .5rem; color: #57606a; font-size: .85rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
section.front > h2 { display: none; }
section#answers { border-top: 2px solid #d0d7de; }
.answer { display: grid; grid-template-columns: minmax(0, 41fr) minmax(0, 59fr); gap: 1rem;
          align-items: start; padding: .45rem 0; border-bottom: 1px solid #eaeef2; }
.answer .q { font-weight: 600; margin: 0 0 .25rem; font-size: 1.02rem; }
.answer p { margin: .25rem 0; font-size: .87rem; }
.answer figure { margin: 0; }
.answer figure img { width: 100%; max-height: 300px; object-fit: contain; }
.answer figcaption { font-size: .72rem; line-height: 1.25; }
.outcome { display: inline-block; padding: 0 .45rem; border-radius: .7rem; font-weight: 600;
           font-size: .85rem; background: #eaeef2; }
.o-different { background: #ffd8b5; } .o-negligible { background: #d8f3dc; }
.o-equivalent { background: #b7ebc6; } .o-inconclusive { background: #fff1a8; }
.o-insufficient-runs, .o-void, .o-not-measured { background: #e1e4e8; color: #57606a; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .8rem; max-width: 100%; }
caption { text-align: left; font-style: italic; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .2rem .4rem; vertical-align: top;
         overflow-wrap: break-word; }
td.brk { overflow-wrap: anywhere; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin: .4rem 0 1rem; }
details > summary { cursor: pointer; color: #0969da; }
td.note details > summary { font-size: .75rem; }
td.note { max-width: 28rem; }
dl dt { font-weight: 600; margin-top: .4rem; } dl dd { margin: 0 0 0 1.2rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .85rem; color: #57606a; }
pre { background: #f6f8fa; padding: .8rem; white-space: pre-wrap; overflow-wrap: anywhere;
      font-size: .8rem; }
nav ul { columns: 3; }
li { margin: .2rem 0; }
"""


def _cell_class(text: str, numeric: bool) -> str:
    """A cell's class: right-aligned numbers; cells holding a long unbroken token (a checksum,
    a path, a run id) may break anywhere, so no table is wider than the page."""
    names = (["num"] if numeric else []) + (
        ["brk"] if any(len(tok) > 24 for tok in str(text).split()) else [])
    return f' class="{" ".join(names)}"' if names else ""


def _badge(word: str) -> str:
    return f'<span class="outcome o-{slug(word)}">{html_text(word)}</span>'


def _html_span(s: str) -> str:
    if isinstance(s, Strong):
        return f"<strong>{html_text(s)}</strong>"
    if isinstance(s, Outcome):
        return _badge(s)
    if isinstance(s, Link):
        return f'<a href="#{html_text(s.target)}">{html_text(s)}</a>'
    return html_text(s)


def _html_spans(p: Paragraph) -> str:
    return "".join(_html_span(s) for s in p.spans)


def _html_block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{_html_spans(b)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_html_spans(p)}</li>" for p in b.items) + "</ul>"
    if isinstance(b, Table):
        numeric = b.numeric or [False] * len(b.header)
        notes = b.notes if b.notes and any(n is not None for n in b.notes) else None
        parts = ["<table>"]
        if b.caption:
            parts.append(f"<caption>{html_text(b.caption)}</caption>")
        header = [*b.header, b.notes_title] if notes else b.header
        parts.append("<thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in header)
                     + "</tr></thead><tbody>")
        for i, row in enumerate(b.rows):
            cells = [f"<td{_cell_class(c, n)}>{html_text(c)}</td>"
                     for c, n in zip(row, numeric, strict=True)]
            if notes:
                note = notes[i] if i < len(notes) else None
                cells.append('<td class="note"><details><summary>read</summary>'
                             f"{_html_spans(note)}</details></td>" if note is not None
                             else "<td></td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        html_table = "".join(parts)
        if b.fold or (b.fold is None and len(b.rows) > FOLD_ROWS):
            what = b.caption.split(". ")[0].rstrip(".") if b.caption else "Table"
            return (f'<details class="table-fold"><summary>{html_text(what)} '
                    f"({len(b.rows)} rows)</summary>{html_table}</details>")
        return html_table
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="figure-{b.number}"><img src="data:image/png;base64,{data}" '
                f'alt="{html_text(b.alt)}" /><figcaption>Figure {b.number}: '
                f"{html_text(b.caption)}</figcaption></figure>")
    if isinstance(b, Code):
        return f"<pre><code>{html_text(b.text.rstrip())}</code></pre>"
    if isinstance(b, Definitions):
        return "<dl>" + "".join(f'<dt id="{html_text(anchor)}">{html_text(term)}</dt>'
                                f"<dd>{_html_spans(d)}</dd>" for term, anchor, d in b.items) \
            + "</dl>"
    if isinstance(b, Details):
        return (f"<details><summary>{html_text(b.summary)}</summary>"
                + "".join(_html_block(x) for x in b.blocks) + "</details>")
    if isinstance(b, Answer):
        anchor = f' id="{b.anchor}"' if b.anchor else ""
        text = [f'<p class="q">{html_text(b.question)} '
                + " ".join(_badge(o) for o in b.outcome) + "</p>"]
        text += [_html_block(p) for p in b.paragraphs]
        fig = _html_block(b.figure) if b.figure is not None else ""
        return (f'<div class="answer"{anchor}><div class="answer-text">{"".join(text)}</div>'
                f"{fig}</div>")
    raise TypeError(f"unknown block {type(b).__name__}")


def to_html(doc: Document) -> str:
    number_figures(doc)
    out = ["<!DOCTYPE html>", '<html lang="en"><head>',
           '<meta charset="utf-8" />',
           '<meta name="viewport" content="width=device-width, initial-scale=1" />',
           f"<title>{html_text(doc.title)}</title>", f"<style>{CSS}</style>", "</head><body>",
           f"<h1>{html_text(doc.title)}</h1>"]
    for b in doc.intro:
        out.append(f'<p class="meta">{_html_spans(b)}</p>' if isinstance(b, Paragraph)
                   else _html_block(b))

    def section(s: Section, level: int, front: bool = False) -> None:
        cls = ' class="front"' if front else ""
        out.append(f'<section id="{s.anchor}"{cls}><h{level}>{html_text(s.title)}</h{level}>')
        out.extend(_html_block(b) for b in s.blocks)
        for child in s.subsections:
            section(child, min(level + 1, 6))
        out.append("</section>")

    for s in doc.front:
        section(s, 2, front=s.anchor == "answers")
    out.append("<nav><h2>Contents</h2><ul>" + "".join(
        f'<li><a href="#{s.anchor}">{html_text(s.title)}</a></li>'
        for s in [*doc.front, *doc.sections]) + "</ul></nav>")
    for s in doc.sections:
        section(s, 2)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
