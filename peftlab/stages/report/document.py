"""The report as data (sections of paragraphs, tables, figures, code) and its two renderings.

Sections are built once and rendered twice, so report.md and report.html always say the same
thing. All text is plain text until rendering, where it is escaped for the target: Markdown
(`format.md_text`) or HTML (`html.escape`). The HTML is self-contained: CSS inline, figures as
base64 PNG data URIs, no script, no external URL; it is also well-formed XML (XHTML syntax), so
it can be checked with any XML parser.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from peftlab.stages.report.format import html_text, md_line, md_text


class Strong(str):
    """A span of a paragraph shown in bold."""


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


@dataclass
class Figure:
    png: bytes
    alt: str
    caption: str
    number: int = 0


@dataclass
class Code:
    text: str


Block = Paragraph | Bullets | Table | Figure | Code


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


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def number_figures(doc: Document) -> list[Figure]:
    """Give every figure its number in reading order; return them."""
    figures: list[Figure] = []

    def walk(sections: list[Section]) -> None:
        for s in sections:
            for b in s.blocks:
                if isinstance(b, Figure):
                    figures.append(b)
                    b.number = len(figures)
            walk(s.subsections)

    walk(doc.sections)
    return figures


# ----------------------------------------------------------------------------- Markdown


def _md_spans(p: Paragraph) -> str:
    text = "".join(f"**{md_text(s)}**" if isinstance(s, Strong) else md_text(s)
                   for s in p.spans)
    return md_line(text)


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
        return "\n".join(lines)
    if isinstance(b, Figure):
        # Markdown stays plain text: the figure itself is embedded in report.html only.
        return f"*Figure {b.number} (in report.html): {md_text(b.caption)}*"
    if isinstance(b, Code):
        # An HTML <pre> block rather than a fence: CommonMark passes it through, and its text
        # can be entity-escaped like every other text of the report (a fence shows entities
        # literally).
        return f"<pre><code>{html_text(b.text.rstrip())}</code></pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    number_figures(doc)
    out = [f"# {md_text(doc.title)}", ""]
    out += [x for b in doc.intro for x in (_md_block(b), "")]
    out += ["## Contents", ""]
    out += [f"- [{md_text(s.title)}](#{s.anchor})" for s in doc.sections] + [""]

    def section(s: Section, level: int) -> None:
        out.extend([f'<a id="{s.anchor}"></a>', "", f"{'#' * level} {md_text(s.title)}", ""])
        for b in s.blocks:
            out.extend([_md_block(b), ""])
        for child in s.subsections:
            section(child, level + 1)

    for s in doc.sections:
        section(s, 2)
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
caption { text-align: left; font-style: italic; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .9rem; color: #57606a; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .82rem; }
nav ul { columns: 2; }
li { margin: .2rem 0; }
"""


def _html_spans(p: Paragraph) -> str:
    return "".join(f"<strong>{html_text(s)}</strong>" if isinstance(s, Strong)
                   else html_text(s) for s in p.spans)


def _html_block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{_html_spans(b)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_html_spans(p)}</li>" for p in b.items) + "</ul>"
    if isinstance(b, Table):
        numeric = b.numeric or [False] * len(b.header)
        parts = ["<table>"]
        if b.caption:
            parts.append(f"<caption>{html_text(b.caption)}</caption>")
        parts.append("<thead><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in b.header)
                     + "</tr></thead><tbody>")
        for row in b.rows:
            parts.append("<tr>" + "".join(
                f'<td class="num">{html_text(c)}</td>' if n else f"<td>{html_text(c)}</td>"
                for c, n in zip(row, numeric, strict=True)) + "</tr>")
        parts.append("</tbody></table>")
        return "".join(parts)
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (f'<figure id="figure-{b.number}"><img src="data:image/png;base64,{data}" '
                f'alt="{html_text(b.alt)}" /><figcaption>Figure {b.number}: '
                f"{html_text(b.caption)}</figcaption></figure>")
    if isinstance(b, Code):
        return f"<pre><code>{html_text(b.text.rstrip())}</code></pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def to_html(doc: Document) -> str:
    number_figures(doc)
    out = ["<!DOCTYPE html>", '<html lang="en"><head>',
           '<meta charset="utf-8" />',
           '<meta name="viewport" content="width=device-width, initial-scale=1" />',
           f"<title>{html_text(doc.title)}</title>", f"<style>{CSS}</style>", "</head><body>",
           f"<h1>{html_text(doc.title)}</h1>"]
    out += [_html_block(b) for b in doc.intro]
    out.append("<nav><h2>Contents</h2><ul>" + "".join(
        f'<li><a href="#{s.anchor}">{html_text(s.title)}</a></li>' for s in doc.sections)
        + "</ul></nav>")

    def section(s: Section, level: int) -> None:
        out.append(f'<section id="{s.anchor}"><h{level}>{html_text(s.title)}</h{level}>')
        out.extend(_html_block(b) for b in s.blocks)
        for child in s.subsections:
            section(child, min(level + 1, 6))
        out.append("</section>")

    for s in doc.sections:
        section(s, 2)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
