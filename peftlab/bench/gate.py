"""The correctness gate: a served model must give the logits its references give, before any timing.

    cmp = compare_logits("merged", merged_logits, "unmerged", unmerged_logits, tolerance=1e-4)
    head = compare_head("head vs artifact", served_head_tensors, artifact_head_tensors, 1e-4)
    gate = gate_result([cmp, head], dtype="float32", tolerance=1e-4)

Agreement is judged relative to the values' scale: rel = max|a - b| / max(max|a|, max|b|). An
absolute tolerance cannot serve both a logit of 0.3 and a late Llama hidden state of 3000 (where
unmerged and merged differed by 2e-2 absolute, 2.6e-5 relative, with identical predictions).
Predictions must agree too, except where the reference itself cannot decide: an example whose
top-two logit margin is below twice the allowed difference (tolerance x scale) may flip on
rounding alone (a bf16 near-tie), so only flips with a larger margin ("decisive") fail the gate;
all flips are counted and stored.

A second kind of check compares the trained classification head the served model uses with the
head tensors stored in the artifact (PEFT keeps the head in `modules_to_save`, which is easy to lose
on save or merge, and a base with a fresh random head still produces plausible logits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The scale floor keeps a relative difference finite when every value is ~0.
_TINY = 1e-12

# Tolerances per serving dtype are `BenchSpec.gate_tolerance` (peftlab/spec.py). The bfloat16 and
# float16 defaults were chosen before any GPU run: they are to be set from the measurement of
# benchmarks/gpu_check.py on a GPU (its "gate tolerances" lines: the largest relative difference
# unmerged vs merged vs reloaded per dtype, and the tolerance that implies), with that
# measurement stated next to them. Do not change them without a GPU measurement.


def relative_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(max|a - b|, scale = max(max|a|, max|b|), max|a - b| / scale); arrays of equal shape."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare logits of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0, 0.0, 0.0
    diff = float(np.max(np.abs(a - b)))
    scale = float(max(np.max(np.abs(a)), np.max(np.abs(b))))
    return diff, scale, diff / max(scale, _TINY)


def compare_logits(name: str, served: np.ndarray, ref_name: str, reference: np.ndarray, *,
                   tolerance: float) -> dict[str, Any]:
    """One gate comparison of logits [n, num_labels] (float arrays) against a reference.

    Returns {name, reference, kind: "logits", n, max_abs_diff, scale, rel_diff, tolerance,
    finite, pred_agreement (share of equal argmax), pred_flips, decisive_flips, passed}.
    Regression heads (one logit) have no predictions to flip: only the values are compared.
    """
    served = np.asarray(served, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    finite = bool(np.isfinite(served).all() and np.isfinite(reference).all())
    diff, scale, rel = relative_difference(served, reference)
    flips = decisive = 0
    agreement = 1.0
    if served.ndim == 2 and served.shape[1] > 1 and served.shape[0] > 0:
        p_served, p_ref = served.argmax(1), reference.argmax(1)
        flipped = p_served != p_ref
        top2 = np.sort(reference, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        flips = int(flipped.sum())
        # Within tolerance each logit may move by tolerance * scale, the gap by twice that.
        decisive = int((flipped & (margin > 2 * tolerance * scale)).sum())
        agreement = float(1 - flipped.mean())
    passed = finite and rel <= tolerance and decisive == 0
    return {"name": name, "reference": ref_name, "kind": "logits", "n": int(served.shape[0]),
            "max_abs_diff": diff, "scale": scale, "rel_diff": rel if finite else None,
            "tolerance": tolerance, "finite": finite, "pred_agreement": agreement,
            "pred_flips": flips, "decisive_flips": decisive, "passed": passed}


def compare_head(name: str, served: dict[str, np.ndarray], artifact: dict[str, np.ndarray], *,
                 tolerance: float) -> dict[str, Any]:
    """The served model's head tensors vs the artifact's (both: "score.weight" -> array).

    Fails when the artifact holds no head tensor (the head was dropped on save), when a tensor is
    missing on either side, or when any tensor differs by more than `tolerance` (relative).
    """
    out: dict[str, Any] = {"name": name, "reference": "artifact head tensors", "kind": "head",
                           "tensors": sorted(artifact), "tolerance": tolerance}
    if not artifact:
        return {**out, "passed": False, "rel_diff": None,
                "why": "the artifact holds no classification-head tensors: the served head is the "
                       "base model's, not the trained one"}
    missing = sorted(set(artifact) - set(served))
    if missing:
        return {**out, "passed": False, "rel_diff": None,
                "why": f"the served model has no head parameter(s) {missing}"}
    worst = 0.0
    for key, value in artifact.items():
        if np.shape(served[key]) != np.shape(value):
            return {**out, "passed": False, "rel_diff": None,
                    "why": f"head tensor {key} has shape {list(np.shape(served[key]))} in the "
                           f"served model but {list(np.shape(value))} in the artifact"}
        worst = max(worst, relative_difference(served[key], value)[2])
    return {**out, "rel_diff": worst, "passed": worst <= tolerance}


def gate_result(checks: list[dict[str, Any]], *, dtype: str, tolerance: float) -> dict[str, Any]:
    """{passed, dtype, tolerance, rule, checks, failures}: passed when every check passed."""
    failures = [c for c in checks if not c["passed"]]
    return {
        "passed": bool(checks) and not failures,
        "dtype": dtype,
        "tolerance": tolerance,
        "rule": "max|a-b| / max(max|a|, max|b|) <= tolerance, and no prediction flips where the "
                "reference's top-2 margin exceeds 2 x tolerance x scale",
        "checks": checks,
        "failures": [describe_failure(c) for c in failures],
    }


def describe_failure(check: dict[str, Any]) -> str:
    """One line for a failed check, for failure reasons and console output."""
    if check.get("why"):
        return f"{check['name']}: {check['why']}"
    if check["kind"] == "logits":
        if not check.get("finite", True):
            return f"{check['name']} vs {check['reference']}: non-finite logits"
        rel = check["rel_diff"]
        return (f"{check['name']} vs {check['reference']}: relative difference {rel:.3g} "
                f"(tolerance {check['tolerance']:.3g}), {check['decisive_flips']} decisive "
                f"prediction flip(s) of {check['n']}")
    return f"{check['name']}: relative difference {check['rel_diff']:.3g} (tolerance " \
           f"{check['tolerance']:.3g})"
