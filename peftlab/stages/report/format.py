"""Number formatting and escaping for the report: one fixed precision per kind of number.

Every number the report prints goes through one of these functions, so the precision is the same
everywhere and a reader (or a test) can find each printed number in the stored results by rounding
the stored value the same way:

    metric      accuracy, F1, MCC, correlation        4 decimals      0.8125
    similarity  CKA, cosine                           4 decimals      0.9731
    p           p-values                              4 decimals      0.0312, "< 0.0001" below
    stat        t statistic, d_z, Hedges' g           2 decimals      -3.41
    dof         degrees of freedom                    integer, else 2 decimals
    ms          latency in milliseconds               3 decimals      12.345
    s           seconds (load, training)              3 decimals      0.218
    pct         relative differences                  1 decimal, %    +35.2%
    rate        requests or tokens per second         1 decimal       812.4
    share       shares of variance, FLOPs shares      2 decimals, %   0.12%
    sig         weight norms                          4 significant   0.01234
    bytes       sizes: B, KiB, MiB or GiB (binary)    1 decimal       12.3 MiB
    int         counts                                thousands sep.  1,024

Missing values print as an em dash. Escaping: `html_text` for HTML (html.escape, quotes too);
`md_text` for Markdown, which backslash-escapes Markdown's inline syntax and `|` and writes `<`,
`>`, `&` as entities, so a table cell or a dataset's text can neither break the layout nor inject
markup.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

MISSING = "\u2014"

PRECISION = {
    "metric": "4 decimals", "similarity": "4 decimals", "p": "4 decimals (< 0.0001 below)",
    "stat": "2 decimals", "dof": "integer, else 2 decimals", "ms": "3 decimals", "s": "3 decimals", "pct": "1 decimal",
    "rate": "1 decimal", "share": "2 decimals (percent)", "sig": "4 significant digits",
    "bytes": "1 decimal in B, KiB, MiB or GiB", "int": "integer",
}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, decimals: int) -> str:
    if not _finite(x):
        return MISSING
    text = f"{x:.{decimals}f}"
    return "0." + "0" * decimals if text.lstrip("-") == "0." + "0" * decimals else text


def metric(x: Any) -> str:
    """A task metric or a similarity: 4 decimals."""
    return num(x, 4)


similarity = metric


def pvalue(x: Any) -> str:
    if not _finite(x):
        return MISSING
    return "< 0.0001" if x < 0.0001 else f"{x:.4f}"


def p_eq(x: Any) -> str:
    """A p-value after 'p': '= 0.0312', or '< 0.0001' (never 'p = < 0.0001', never 'p = 0')."""
    text = pvalue(x)
    return text if text.startswith("<") else f"= {text}"


def text(x: Any) -> str:
    """A label from the results (a method, a seed); None prints as missing."""
    return MISSING if x is None else str(x)


def dof(x: Any) -> str:
    """Degrees of freedom: an integer as is (paired tests), otherwise 2 decimals (Welch)."""
    if _finite(x) and float(x).is_integer():
        return str(int(x))
    return num(x, 2)


def stat(x: Any) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return num(x, 2)


def ms(x: Any) -> str:
    """A duration (milliseconds or seconds, the unit in the column header): 3 decimals."""
    return num(x, 3)


seconds = ms


def pct(x: Any) -> str:
    """A fraction as a signed percentage: 0.352 -> "+35.2%"."""
    if not _finite(x):
        return MISSING
    text = f"{100 * x:+.1f}%"
    return "+0.0%" if text == "-0.0%" else text


def share(x: Any) -> str:
    """A fraction as an unsigned percentage with 2 decimals: 0.0012 -> "0.12%"."""
    return MISSING if not _finite(x) else f"{100 * x:.2f}%"


def rate(x: Any) -> str:
    return num(x, 1)


def sig(x: Any) -> str:
    return MISSING if not _finite(x) else f"{x:.4g}"


def integer(x: Any) -> str:
    return MISSING if not _finite(x) else f"{int(x):,}"


def nbytes(x: Any) -> str:
    if not _finite(x):
        return MISSING
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(x) >= size:
            return f"{x / size:.1f} {unit}"
    return f"{int(x)} B"


def interval(lo: Any, hi: Any, fmt) -> str:
    return MISSING if not (_finite(lo) and _finite(hi)) else f"[{fmt(lo)}, {fmt(hi)}]"


# ----------------------------------------------------------------------------- escaping

# Inline syntax: emphasis, code, table cells, strikethrough; "](" / "][" would close a link.
_MD_SPECIAL = re.compile(r"([\\`*_|~]|\](?=[(\[]))")
# Block syntax that only matters at the start of a line (headings, lists, quotes, rules).
_MD_LINE_START = re.compile(r"^(\s*\d*)([#+\-=>](?!\d)|(?<=\d)[.)])")


def md_text(text: Any) -> str:
    """Text safe inside a Markdown table cell or a paragraph (whitespace folded to one line)."""
    s = re.sub(r"\s+", " ", str(text))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def md_line(text: str) -> str:
    """An already escaped line that starts a paragraph: block syntax at its start escaped."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text, count=1)


def html_text(text: Any) -> str:
    return html.escape(str(text), quote=True)
