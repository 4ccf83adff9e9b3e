"""The glossary: every statistic and measure the report names, defined once, folded at the end of
the report, and linked from the first place each is used.

    doc = Document(...)
    add_glossary(doc)   # appends the Glossary section; links each term's first use to it

A term is listed only when the report uses it (its pattern occurs in the report's text), so the
glossary of a study without a benchmark defines no percentile. The first occurrence of each
listed term in a paragraph, in reading order (the answers and the trust panel first), becomes a
`Link` to the term's anchor; later occurrences stay plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftlab.stages.report.document import (
    Answer,
    Block,
    Bullets,
    Definitions,
    Details,
    Document,
    Link,
    Outcome,
    Paragraph,
    Section,
    Strong,
    Table,
    slug,
)


@dataclass(frozen=True)
class Term:
    name: str
    pattern: str  # a regular expression matched against the report's plain text
    definition: str

    @property
    def anchor(self) -> str:
        return f"glossary-{slug(self.name)}"


# In the order the glossary lists them: tests and corrections, then effect sizes and power, then
# the drift measures and their controls, then weight space, then latency.
TERMS: tuple[Term, ...] = (
    Term("paired t-test", r"paired t-test",
         "The test of the mean of the paired differences (a minus b, pairs matched by seed) "
         "against 0, with n - 1 degrees of freedom; its interval is the t-interval of that "
         "mean."),
    Term("t-interval", r"t-interval",
         "mean \u00b1 t(1 - alpha/2, n - 1) x sd / sqrt(n): the confidence interval of a mean "
         "over n seeds. Unadjusted: it is not widened for the other tests of its family."),
    Term("Wilcoxon signed-rank test", r"Wilcoxon",
         "A rank test of the paired differences; it decides where the differences have zero "
         "spread (t undefined) and is shown beside t otherwise."),
    Term("Holm correction", r"\bHolm\b",
         "Holm's step-down correction for multiple tests: the p-values of a family are sorted "
         "and the i-th smallest is compared with alpha / (m - i + 1), which keeps the chance of "
         "any false 'different' in the family at most alpha. A corrected p can exceed alpha "
         "while the unadjusted 95% interval excludes 0: the interval is not corrected."),
    Term("Bonferroni correction", r"\bBonferroni\b",
         "Each of m tests of a family at alpha / m (p-values multiplied by m)."),
    Term("family", r"\bfamil(?:y|ies)\b",
         "The set of tests corrected together: the primary endpoints, or one exploratory area "
         "(drift, latency, forgetting, ...)."),
    Term("TOST", r"\bTOST\b",
         "Two one-sided tests: equivalence is claimed when the difference is shown to be both "
         "above -margin and below +margin (both one-sided tests reject at alpha), i.e. the "
         "(1 - 2 alpha) interval lies inside the margin."),
    Term("d_z", r"\bd_z\b",
         "Cohen's d for paired data: the mean of the paired differences divided by their "
         "standard deviation (unitless)."),
    Term("MDE", r"\bMDE\b|minimum detectable",
         "Minimum detectable effect: the smallest |d_z| the test would detect with the stated "
         "power at its n and its family's corrected alpha (Holm's first step); in the "
         "measure's unit it is that d_z times the observed sd of the differences."),
    Term("Hedges' g", r"Hedges",
         "A standardised difference of two independent means with a small-sample correction."),
    Term("mixed model", r"mixed model|MixedLM",
         "A linear mixed-effects model over every task: task x method as fixed effects and the "
         "(task, seed) pair as a random intercept. Task is a fixed effect, so the estimate "
         "'across tasks' covers the tasks of this study only, not tasks in general."),
    Term("REML", r"\bREML\b",
         "Restricted maximum likelihood: how the mixed model estimates its variance components "
         "(less biased than plain maximum likelihood at few groups)."),
    Term("relative change", r"[Rr]elative",
         "The difference divided by the reference's (b's) mean. It is printed only where that "
         "mean is larger than the width of the difference's interval; near a zero reference a "
         "percentage says nothing and the absolute difference is shown instead."),
    Term("debiased linear CKA", r"debiased linear CKA",
         "Centred kernel alignment with linear kernels and the unbiased HSIC estimator: 1 for "
         "representations equal up to rotation and isotropic scaling, about 0 for unrelated "
         "ones at any n and width."),
    Term("linear CKA (biased)", r"(?<!debiased )linear CKA",
         "CKA with the plug-in (biased) HSIC estimator: well above 0 even for unrelated "
         "representations at small n, so it is read against its own null floor."),
    Term("centred cosine", r"centred cosine",
         "The mean over examples of the cosine between the two models' pooled vectors after "
         "removing each model's mean vector over the probe set."),
    Term("uncentred cosine", r"uncentred cosine",
         "The same cosine without removing the mean: dominated by a constant offset in many "
         "models, so close to 1 even for unrelated representations."),
    Term("Procrustes distance", r"Procrustes",
         "Orthogonal Procrustes distance of the centred, unit-norm representations, in [0, 2]: "
         "0 = the same up to rotation, reflection, translation and scaling (a distance: lower "
         "is closer)."),
    Term("kNN overlap", r"kNN overlap",
         "The mean over examples of the share of each example's k nearest neighbours (cosine) "
         "that the two models agree on; unrelated representations give about k / (n - 1)."),
    Term("null floor", r"null floor",
         "The 95% quantile of a measure after shuffling which example is paired with which: "
         "what the measure gives for unrelated representations at the same n and width."),
    Term("seed-to-seed", r"seed-to-seed|seed to seed",
         "The same measure between two runs of the same method that differ only in their seed: "
         "how far runs move apart by chance."),
    Term("permutation p", r"[Pp]ermutation p",
         "The share of shuffled pairings at least as similar as the observed one (with the "
         "observed one counted): small when a value clears its null floor."),
    Term("bootstrap interval", r"bootstrap",
         "An interval from resampling with replacement (examples, or texts) and recomputing; "
         "a paired bootstrap resamples the same examples for both models, so their difference "
         "keeps its pairing."),
    Term("effective rank", r"[Ee]ffective rank",
         "exp of the entropy of the normalised singular values of a weight update (Roy & "
         "Vetterli, 2007): how many directions it spreads over."),
    Term("energy rank", r"[Ee]nergy rank",
         "The fewest singular values whose squares hold 90% of the update's squared Frobenius "
         "norm."),
    Term("numerical rank", r"[Nn]umerical rank",
         "The singular values above a cut-off set by the precision the weights are stored in."),
    Term("intruder dimensions", r"[Ii]ntruder dim",
         "Top singular vectors of a tuned matrix with |cosine| below a threshold to every "
         "singular vector of the base matrix: directions the base did not have."),
    Term("Spearman's rho", r"Spearman",
         "The rank correlation of two quantities over runs."),
    Term("Fisher z interval", r"Fisher z",
         "An interval for a correlation from atanh(rho), which is close to normal."),
    Term("p50 / p90 / p95 / p99", r"\bp(?:50|90|95|99)\b",
         "Latency percentiles over one model's timed calls. A percentile q is shown only where "
         "at least 1 / (1 - q) calls back it (p90 10, p95 20, p99 100), so that at least one "
         "call lies beyond it."),
    Term("timed call", r"timed call",
         "One forward pass of one batch (batch size examples), timed from the call to its "
         "answer: the unit the latency tables count. At batch 8 one call answers 8 examples."),
    Term("compute-only floor", r"compute-only floor|FLOPs floor|compute floor",
         "The share of FLOPs the adapter path adds to the base's linear layers: the smallest "
         "overhead the extra compute alone would cause."),
    Term("sustained", r"\bsustain",
         "A load run is sustained when every request was answered and the achieved throughput "
         "is at least 0.9 x the realised arrival rate (requests offered / arrival window)."),
)


def _texts(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Paragraph):
            out.append("".join(b.spans))
        elif isinstance(b, Bullets):
            out += ["".join(p.spans) for p in b.items]
        elif isinstance(b, Table):
            out += [b.caption, " ".join(b.header)] + [" ".join(r) for r in b.rows]
            out += ["".join(n.spans) for n in b.notes or [] if n is not None]
        elif isinstance(b, Answer):
            out += [b.question] + ["".join(p.spans) for p in b.paragraphs]
            if b.figure is not None:
                out.append(b.figure.caption)
        elif isinstance(b, Details):
            out += [b.summary] + _texts(b.blocks)
        elif hasattr(b, "caption"):
            out.append(b.caption)
    return out


def _sections(doc: Document) -> list[Section]:
    out: list[Section] = []

    def walk(ss: list[Section]) -> None:
        for s in ss:
            out.append(s)
            walk(s.subsections)

    walk(doc.front)
    walk(doc.sections)
    return out


def used_terms(doc: Document) -> list[Term]:
    """The terms whose pattern occurs anywhere in the document's text, in glossary order."""
    text = "\n".join(t for s in _sections(doc) for t in [s.title, *_texts(s.blocks)])
    return [t for t in TERMS if re.search(t.pattern, text)]


def _link_paragraph(p: Paragraph, pending: dict[str, Term]) -> None:
    """Link the first occurrence in `p` of every term still in `pending` (removed once
    linked). Only plain spans are linked: bold spans and outcome badges stay as they are."""
    spans: list[str] = []
    for span in p.spans:
        if isinstance(span, (Strong, Outcome, Link)) or not pending:
            spans.append(span)
            continue
        rest = str(span)
        while pending:
            hits = [(m.start(), m.end(), t) for t in pending.values()
                    if (m := re.search(t.pattern, rest))]
            if not hits:
                break
            start, end, term = min(hits, key=lambda h: (h[0], -h[1]))
            while end < len(rest) and (rest[end].isalnum() or rest[end] == "_"):
                end += 1  # the whole word: "Intruder dimensions", not "Intruder dim"
            if start:
                spans.append(rest[:start])
            spans.append(Link.to(rest[start:end], term.anchor))
            del pending[term.name]
            rest = rest[end:]
        if rest:
            spans.append(rest)
    p.spans = spans


def _link_blocks(blocks: list[Block], pending: dict[str, Term]) -> None:
    for b in blocks:
        if not pending:
            return
        if isinstance(b, Paragraph):
            _link_paragraph(b, pending)
        elif isinstance(b, Bullets):
            for p in b.items:
                _link_paragraph(p, pending)
        elif isinstance(b, Answer):
            for p in b.paragraphs:
                _link_paragraph(p, pending)
        elif isinstance(b, Details):
            _link_blocks(b.blocks, pending)


def add_glossary(doc: Document) -> Section:
    """Append the Glossary section (the terms the report uses, folded) to `doc` and link each
    term's first use in a paragraph to its definition. Returns the section."""
    terms = used_terms(doc)
    pending = {t.name: t for t in terms}
    for s in _sections(doc):
        _link_blocks(s.blocks, pending)
    section = Section("Glossary", "glossary")
    section.add(Paragraph.of(
        f"{len(terms)} statistics and measures this report uses, each defined once; the first "
        "mention of each links here."),
        Details(f"Definitions ({len(terms)})",
                [Definitions([(t.name, t.anchor, Paragraph.of(t.definition)) for t in terms])]))
    doc.sections.append(section)
    return section
