"""How to read this report: the unit of analysis, the tests, the endpoints, the corrections, the
margins, the outcome words and the printed precision, from the spec's stats settings and the
`stats` table's settings record.
"""

from __future__ import annotations

from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Outcome, Paragraph, Section
from peftlab.stages.report.stored import Results, conf_label, families


def how_to_read(res: Results) -> Section:
    cfg = res.spec.stats
    s = Section("How to read this report", "how-to-read")
    fams = families(res)
    fam_text = ", ".join(f"{name} ({v.get('tested', 0)} tested of {v.get('planned', 0)} "
                         "planned)" for name, v in fams.items())
    s.add(Bullets([
        Paragraph.of("Unit of analysis: one value per independent run (seed). Benchmarks enter "
                     "as each run's median latency, never as individual timed calls."),
        Paragraph.of("Runs that learned nothing: each run's main metric is set against the "
                     "majority-class rate, the best constant prediction and chance on the same "
                     "evaluation examples; a run whose bootstrap interval does not clear them "
                     "is degenerate, listed, and left out of the drift and deployment "
                     "comparisons."),
        Paragraph.of("Decision test: paired t-test (pairs matched by seed); when the paired "
                     "differences have zero spread t is undefined and the exact Wilcoxon "
                     "signed-rank test decides. Effect size d_z with its interval; intervals "
                     f"at {conf_label(res)}."),
        Paragraph.of("Primary endpoints (one per question, corrected together across the "
                     "study, family 'primary'): "
                     + "; ".join(f"{q}: {t}" for q, t in
                                 (res.settings.get("endpoints") or {}).items())
                     + ". Everything else is exploratory, corrected within its own family."),
        Paragraph.of(f"Multiplicity: {fnd.correction_name({'correction': cfg.correction})} "
                     f"correction at alpha = {cfg.alpha} within each family: {fam_text}."),
        Paragraph.of("No-difference claims use equivalence tests (TOST): main metric within "
                     f"\u00b1{f.metric(cfg.metric_margin)} (absolute), latency within "
                     f"\u00b1{f.pct(cfg.latency_margin).lstrip('+')} of the reference's mean."),
        Paragraph.of("Outcomes: ", Outcome("different"), " (corrected p < alpha, not inside the "
                     "margin), ", Outcome("negligible"), " (different, but TOST places it inside "
                     "the margin), ", Outcome("equivalent"), " (corrected TOST p < alpha), ",
                     Outcome("inconclusive"), " (neither; with what the study could have "
                     "detected), ", Outcome("insufficient runs"),
                     f" (fewer than {cfg.min_runs} complete pairs: no test), ", Outcome("void"),
                     " (the runs are degenerate: not evidence)."),
        Paragraph.of("Drift: layer bands are over transformer layers; layer 0 (the embedding "
                     "output) is shown on its own and never averaged in. The null floor is the "
                     "95% quantile of the measure after shuffling the pairing of examples (its "
                     "mean is kept in the data); cosine is centred (probe-set mean removed) "
                     "unless labelled uncentred."),
        Paragraph.of(f"Power: minimum detectable effects at {round(100 * cfg.power)}% power, at "
                     "each test's n and its family's corrected alpha (Holm's first step)."),
        Paragraph.of("Precision: " + "; ".join(f"{k}: {v}" for k, v in f.PRECISION.items())
                     + ". Missing values print as " + f.MISSING + "."),
    ]))
    return s
