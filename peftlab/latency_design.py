"""Paired, repeated latency comparisons: the observation, its analysis, and the design's size.

    obs = round_log_ratios(a_ns, b_ns)                  # one per round: [..., segments, requests]
    res = analyse_pairs(blocks, alpha=0.05, margin=0.05, power=0.8, floor=aa_floor)
    res["ratio"], res["ci"], res["outcome"], res["mdd_pct"]
    plan = plan_design(sigma_round=..., sigma_block=..., round_s=..., block_s=..., ...)

Why this design (Kalibera & Jones, "Rigorous benchmarking in reasonable time", ISMM 2013). Two
serving strategies A and B are compared on latency. What varies between repeated measurements
of one model is the machine (shared cores drift by +/-30% over minutes), not the training seed,
so the unit of a test is not the seed: A and B are measured in the same process, with the same
threads, on the same requests, alternately, and that is repeated in independent processes.

- A *segment* is `n` timed requests of one condition (its median is robust to the odd request
  the operating system delays). A *round* serves every condition of a block twice, in a drawn
  order and then mirrored (A B | B A: ABBA), all on the same requests, so a drift of the machine
  that is linear over the round hits every condition at the same mean time. The round's
  observation for a comparison is the log ratio of the two conditions' latencies: the mean over
  their segments of log(segment median) of A minus that of B (`round_log_ratios`).
- A *block* is one fresh process holding every model of the comparison (both loaded the same
  way, weights in memory of the process's own), running R rounds. Blocks are the independent
  units: what a process shares among its rounds (its memory layout, its threads' placement) is
  shared by its rounds, so rounds are not independent of each other.

Analysis (`analyse_pairs`): each block's mean of its rounds' log ratios, then the mean over
blocks with a t interval on B - 1 degrees of freedom. For a balanced design this is exactly the
REML estimate and interval of the one-way random-effects model (rounds nested in blocks; a
test checks it against statsmodels' MixedLM); unbalanced (blocks with different numbers of
rounds) it stays unbiased, with an unbiased standard error, at a small loss of efficiency. Few
blocks give wide intervals (t on 2 degrees of freedom is 4.30), which is the honest price of
few independent units: a percentile bootstrap over 3 blocks would be too narrow. Variance
components (one-way ANOVA by moments) say where the noise is: `sigma_round` (round to round
within a process) and `sigma_block` (process to process).

Verdict (the four-way reading of Lakens, Scheel & Isager 2018, as `peftlab.stats`): "different"
(the interval excludes no change and TOST does not place it inside the margin), "negligible"
(different, but inside the margin), "equivalent" (TOST inside the margin at alpha, i.e. the
1 - 2 alpha interval within it; not different), "inconclusive" (neither). The margin is relative
to B's latency: the ratio within [1 - m, 1 + m]. An A/A control (one model measured under two
labels in the same design) gives the bench's noise floor (`noise_floor`): a difference whose
estimate lies within it is never called different.

Size (`plan_design`): from a pilot (the first blocks) the round-to-round and block-to-block
variances and the time a round and a block's set-up cost, the smallest design (blocks x rounds)
whose minimum detectable difference, (t_{1-alpha/2} + t_{power}) x SE on B - 1 degrees of
freedom, reaches the target within the remaining time budget; else the most precise one that
fits. Only variances decide the size, never the estimated difference (an internal pilot, Wittes
& Brittain 1990), and a test checks that the whole procedure keeps the false-positive rate.

Everything is vectorised over leading axes, so the false-positive and power checks run
thousands of simulated studies (`simulate_blocks`) at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps

OUTCOMES = ("different", "negligible", "equivalent", "inconclusive")
UNIT = "block (a fresh process holding both models, measured alternately)"


# ----------------------------------------------------------------------------- observations


def round_log_ratios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per round, log latency of A minus log latency of B.

    a, b: latencies (any positive unit, the same for both) shaped [..., segments, requests]:
    each condition's segments within one round (the ABBA order gives 2), each of the same
    requests. Returns [...]: mean over segments of log(median over requests) of a, minus b's.
    """
    la = np.log(np.median(np.asarray(a, dtype=np.float64), axis=-1)).mean(axis=-1)
    lb = np.log(np.median(np.asarray(b, dtype=np.float64), axis=-1)).mean(axis=-1)
    return la - lb


def log_latency(segments: list[list[float]]) -> float:
    """One condition's latency in one round, on the log scale: the mean over its segments of
    log(median latency of the segment); segments may differ in length (`round_log_ratios` is
    the same over equal-length segments, vectorised)."""
    return float(np.mean([np.log(np.median(np.asarray(s, dtype=np.float64)))
                          for s in segments]))


# ----------------------------------------------------------------------------- analysis


def block_summary(x: np.ndarray) -> dict[str, np.ndarray]:
    """The two-level summary of observations x [..., blocks, rounds] (NaN: a round not run; a
    block with no round at all does not count).

    Returns arrays over the leading axes: estimate (mean of block means), se (their standard
    deviation / sqrt(blocks)), df (blocks - 1), blocks, rounds (total), sigma_round (pooled
    within-block standard deviation), sigma_block (between-block standard deviation of the
    true block means, by moments, floored at 0).
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    r_i = valid.sum(axis=-1)  # rounds per block
    has = r_i > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(has, np.nansum(np.where(valid, x, 0.0), axis=-1) / r_i, np.nan)
        n_b = has.sum(axis=-1)
        est = np.nansum(np.where(has, means, 0.0), axis=-1) / n_b
        dev = np.where(has, means - est[..., None], 0.0)
        var_means = (dev ** 2).sum(axis=-1) / (n_b - 1)
        se = np.sqrt(var_means / n_b)
        resid = np.where(valid, x - means[..., None], 0.0)
        df_w = (r_i - 1).clip(min=0).sum(axis=-1)
        ms_w = (resid ** 2).sum(axis=(-1, -2)) / df_w
        inv_r = np.where(has, 1.0 / np.where(has, r_i, 1), 0.0).sum(axis=-1) / n_b
        sb2 = np.clip(var_means - ms_w * inv_r, 0.0, None)
    return {"estimate": est, "se": se, "df": n_b - 1, "blocks": n_b,
            "rounds": r_i.sum(axis=-1), "sigma_round": np.sqrt(ms_w),
            "sigma_block": np.sqrt(sb2)}


def mdd_log(se: Any, df: Any, *, alpha: float, power: float) -> np.ndarray:
    """Minimum detectable difference on the log scale: (t_{1-alpha/2} + t_{power}) x se on df
    degrees of freedom (the normal-approximation rule with t quantiles)."""
    df = np.asarray(df, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        q = sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)
    return np.where(df >= 1, q * np.asarray(se), np.inf)


def to_pct(log_ratio: Any) -> Any:
    """A log ratio as a relative change in % (log(1.05) -> 5.0)."""
    return 100.0 * np.expm1(log_ratio)


def verdict_arrays(x: np.ndarray, *, alpha: float, margin: float | None = None,
                floor: Any = None) -> dict[str, np.ndarray]:
    """`block_summary` plus the interval and the verdict flags, over the leading axes.

    Returns: estimate, se, df, ci_low, ci_high (log scale, 1 - alpha), p (two-sided t),
    different (p < alpha and |estimate| beyond `floor`), p_tost and equivalent (when margin is
    given: TOST against [log(1 - margin), log(1 + margin)]), outcome index into OUTCOMES.
    """
    s = block_summary(x)
    est, se, df = s["estimate"], s["se"], s["df"].astype(np.float64)
    ok = (df >= 1) & (se > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = sps.t.ppf(1 - alpha / 2, np.where(ok, df, 1))
        t = np.where(ok, est / np.where(ok, se, 1), np.nan)
        p = np.where(ok, 2 * sps.t.sf(np.abs(t), np.where(ok, df, 1)), np.nan)
    s.update(ci_low=np.where(ok, est - q * se, np.nan), ci_high=np.where(ok, est + q * se, np.nan),
             p=p)
    different = ok & (p < alpha)
    if floor is not None:
        different &= np.abs(est) > np.asarray(floor)
    s["different"] = different
    if margin is not None:
        lo, hi = math.log(1 - margin), math.log(1 + margin)
        with np.errstate(invalid="ignore", divide="ignore"):
            dfx = np.where(ok, df, 1)
            sex = np.where(ok, se, 1)
            p_lo = sps.t.sf((est - lo) / sex, dfx)
            p_hi = sps.t.cdf((est - hi) / sex, dfx)
        s["p_tost"] = np.where(ok, np.maximum(p_lo, p_hi), np.nan)
        s["equivalent"] = ok & (s["p_tost"] < alpha)
    else:
        s["p_tost"] = np.full(np.shape(est), np.nan)
        s["equivalent"] = np.zeros(np.shape(est), dtype=bool)
    eq = s["equivalent"]
    s["outcome"] = np.where(different, np.where(eq, 1, 0), np.where(eq, 2, 3))
    return s


def analyse_pairs(blocks: list[list[float]], *, alpha: float = 0.05,
                  margin: float | None = None, power: float = 0.8,
                  floor: float | None = None) -> dict[str, Any]:
    """The comparison's estimate, interval and verdict from its blocks' per-round log ratios
    (log A - log B; `round_log_ratios`), one list per block (blocks may differ in rounds).

    margin: the equivalence margin relative to B (0.05: within +/-5%), None: no TOST (a
    difference-only comparison). floor: the noise floor on the log scale (`noise_floor` of the
    A/A control), None: none. Returns a JSON-ready dict: ratio (A / B) and ci_low / ci_high
    (ratio scale, 1 - alpha), change_pct and ci_pct (relative change of A against B, %),
    log_estimate, se, df, p, p_tost, outcome (OUTCOMES, or "insufficient blocks" below 2),
    mdd_pct (the smallest difference, in %, detectable at `power`), n_blocks, rounds_per_block,
    n_rounds, sigma_round and sigma_block (log scale: ~ relative noise), unit (what n counts),
    method (how the interval is made), alpha, power, margin, floor_pct.
    """
    n = max((len(b) for b in blocks), default=0)
    x = np.full((len(blocks), max(n, 1)), np.nan)
    for i, b in enumerate(blocks):
        x[i, : len(b)] = b
    s = verdict_arrays(x, alpha=alpha, margin=margin, floor=floor)
    blocks_n = int(s["blocks"])
    out: dict[str, Any] = {
        "n_blocks": blocks_n, "rounds_per_block": [len(b) for b in blocks],
        "n_rounds": int(s["rounds"]), "unit": UNIT,
        "method": f"mean of block means, t interval on blocks - 1 df (the balanced one-way "
                  f"random-effects model), {100 * (1 - alpha):g}%",
        "alpha": alpha, "power": power, "margin": margin,
        "floor_pct": None if floor is None else float(to_pct(floor)),
    }
    if blocks_n < 2 or not np.isfinite(s["se"]):
        est = float(s["estimate"]) if blocks_n else None
        out.update(log_estimate=est, ratio=None if est is None else math.exp(est),
                   change_pct=None if est is None else float(to_pct(est)), ci_low=None,
                   ci_high=None, ci_pct=None, se=None, df=max(blocks_n - 1, 0), p=None,
                   p_tost=None, outcome="insufficient blocks", mdd_pct=None,
                   sigma_round=_num(s["sigma_round"]), sigma_block=None)
        return out
    est, lo, hi = float(s["estimate"]), float(s["ci_low"]), float(s["ci_high"])
    out.update(
        log_estimate=est, ratio=math.exp(est), ci_low=math.exp(lo), ci_high=math.exp(hi),
        change_pct=float(to_pct(est)), ci_pct=[float(to_pct(lo)), float(to_pct(hi))],
        se=float(s["se"]), df=int(s["df"]), p=float(s["p"]),
        p_tost=None if margin is None else float(s["p_tost"]),
        outcome=OUTCOMES[int(s["outcome"])],
        mdd_pct=float(to_pct(mdd_log(s["se"], s["df"], alpha=alpha, power=power))),
        sigma_round=_num(s["sigma_round"]), sigma_block=_num(s["sigma_block"]))
    return out


def noise_floor(aa: dict[str, Any]) -> float | None:
    """The bench's noise floor on the log scale from an A/A control's `analyse_pairs` result:
    the largest distance of its interval from no change (None when it has no interval)."""
    if aa.get("ci_low") is None:
        return None
    return max(abs(math.log(aa["ci_low"])), abs(math.log(aa["ci_high"])))


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- design size


def predicted_mdd(sigma_round: Any, sigma_block: Any, *, blocks: Any, rounds: Any,
                  pilot_blocks: int, pilot_rounds: int, alpha: float, power: float
                  ) -> np.ndarray:
    """Minimum detectable difference (log scale) of a design of `blocks` blocks, the first
    `pilot_blocks` of `pilot_rounds` rounds and the rest of `rounds` (arrays broadcast)."""
    b = np.asarray(blocks, dtype=np.float64)
    sb2, sr2 = np.asarray(sigma_block) ** 2, np.asarray(sigma_round) ** 2
    p = np.minimum(b, pilot_blocks)
    var = (p * (sb2 + sr2 / pilot_rounds) + (b - p) * (sb2 + sr2 / np.asarray(rounds))) / b ** 2
    return mdd_log(np.sqrt(var), b - 1, alpha=alpha, power=power)


def plan_design(*, sigma_round: Any, sigma_block: Any, round_s: float, block_s: float,
                budget_s: Any, groups: int, detect: float, alpha: float, power: float,
                pilot_blocks: int, pilot_rounds: int, min_blocks: int, max_blocks: int,
                max_rounds: int) -> dict[str, Any]:
    """Blocks and rounds per block (after the pilot) for a target minimum detectable difference.

    sigma_round, sigma_block: per comparison (log scale), shaped [..., comparisons] (leading
    axes: simulated studies); the design is sized for the least precise comparison. round_s,
    block_s: seconds one round and one block's set-up (process, loads, warm-up) take; groups:
    blocks run per design block (one per task and method); budget_s: seconds left for blocks
    after the pilot. detect: the relative difference to detect (0.05).

    Over blocks in [max(min_blocks, pilot_blocks), max_blocks] and rounds in [2, max_rounds]:
    the cheapest design whose predicted minimum detectable difference reaches log(1 + detect)
    within the budget; else, within the budget, the one with the smallest; else the pilot alone.
    Returns arrays over the leading axes: blocks, rounds, mdd_pct (predicted), meets (bool),
    cost_s (predicted seconds after the pilot).
    """
    sr = np.asarray(sigma_round, dtype=np.float64)
    sb = np.asarray(sigma_block, dtype=np.float64)
    lead = np.broadcast_shapes(sr.shape, sb.shape)[:-1]
    lo_b = max(min_blocks, pilot_blocks)
    bs = np.arange(lo_b, max(max_blocks, lo_b) + 1, dtype=np.float64)
    rs = np.arange(2, max(max_rounds, 2) + 1, dtype=np.float64)
    bb, rr = np.meshgrid(bs, rs, indexing="ij")  # [nB, nR]
    cost = groups * (bb - pilot_blocks) * (block_s + rr * round_s)
    mdd = predicted_mdd(sr[..., None, None], sb[..., None, None], blocks=bb, rounds=rr,
                        pilot_blocks=pilot_blocks, pilot_rounds=pilot_rounds, alpha=alpha,
                        power=power).max(axis=-3)  # the least precise comparison: [..., nB, nR]
    budget = np.asarray(budget_s, dtype=np.float64).reshape(lead + (1, 1)) if np.ndim(
        budget_s) else budget_s
    fits = np.broadcast_to(cost <= budget, mdd.shape)
    target = math.log1p(detect)
    meets = fits & (mdd <= target)
    big = np.inf
    # the cheapest design that meets the target (ties: the more precise one)
    score_meet = np.where(meets, cost + 1e-9 * mdd, big)
    score_best = np.where(fits, mdd, big)
    flat = lead + (bb.size,)
    i_meet = np.argmin(score_meet.reshape(flat), axis=-1)
    i_best = np.argmin(score_best.reshape(flat), axis=-1)
    any_meet = meets.reshape(flat).any(axis=-1)
    any_fit = fits.reshape(flat).any(axis=-1)
    idx = np.where(any_meet, i_meet, i_best)
    blocks = np.where(any_fit, bb.reshape(-1)[idx], pilot_blocks)
    rounds = np.where(any_fit, rr.reshape(-1)[idx], pilot_rounds)
    got = np.take_along_axis(mdd.reshape(flat), idx[..., None], axis=-1)[..., 0]
    pilot_mdd = predicted_mdd(sr, sb, blocks=pilot_blocks, rounds=pilot_rounds,
                              pilot_blocks=pilot_blocks, pilot_rounds=pilot_rounds, alpha=alpha,
                              power=power).max(axis=-1)
    got = np.where(any_fit, got, pilot_mdd)
    return {"blocks": np.asarray(blocks).astype(int), "rounds": np.asarray(rounds).astype(int),
            "mdd_pct": to_pct(got), "meets": any_meet,
            "cost_s": np.where(any_fit, cost.reshape(-1)[idx], 0.0)}


# ----------------------------------------------------------------------------- simulation


def simulate_blocks(rng: np.random.Generator, *, studies: int, blocks: int, rounds: int,
                    requests: int, effect: float = 0.0, sigma_request: float = 0.15,
                    sigma_length: float = 0.3, sigma_layout: float = 0.01,
                    sigma_process: float = 0.1, drift_step: float = 0.03,
                    spike_rate: float = 0.03, spike_scale: float = 2.0) -> np.ndarray:
    """Per-round log ratios [studies, blocks, rounds] of simulated A vs B latencies measured as
    the bench does (ABBA segments of `requests` requests, `round_log_ratios`).

    The model (all on the log scale): a request's latency = its length (lognormal,
    `sigma_length`, the same i-th request for A and B within a round) + a process factor of the
    block (`sigma_process`, both conditions alike) + a layout effect of each condition in each
    block (`sigma_layout`: what does not cancel between processes) + the machine's drift (a
    random walk of `drift_step` per segment, continuing over the block's rounds) + A's true
    effect (`effect`, log ratio) + request noise (`sigma_request`), and with probability
    `spike_rate` a delayed request (x (1 + Exp(spike_scale))).
    """
    S, B, R, n = studies, blocks, rounds, requests
    length = rng.normal(0, sigma_length, (S, B, R, 1, n))
    process = rng.normal(0, sigma_process, (S, B, 1, 1, 1))
    layout = rng.normal(0, sigma_layout, (S, B, 2))
    steps = rng.normal(0, drift_step, (S, B, R * 4))
    drift = np.cumsum(steps, axis=-1).reshape(S, B, R, 4)
    a_first = rng.random((S, B, R)) < 0.5  # ABBA or BAAB
    # positions of A's two segments in the round: (0, 3) for ABBA, (1, 2) for BAAB
    pos_a = np.where(a_first[..., None], np.array([0, 3]), np.array([1, 2]))
    pos_b = np.where(a_first[..., None], np.array([1, 2]), np.array([0, 3]))
    drift_a = np.take_along_axis(drift, pos_a, axis=-1)[..., None]  # [S, B, R, 2, 1]
    drift_b = np.take_along_axis(drift, pos_b, axis=-1)[..., None]

    def latencies(extra: np.ndarray, drift_c: np.ndarray) -> np.ndarray:
        noise = rng.normal(0, sigma_request, (S, B, R, 2, n))
        spikes = np.where(rng.random((S, B, R, 2, n)) < spike_rate,
                          np.log1p(rng.exponential(spike_scale, (S, B, R, 2, n))), 0.0)
        return np.exp(length + process + extra + drift_c + noise + spikes)

    a = latencies(layout[..., 0][..., None, None, None] + effect, drift_a)
    b = latencies(layout[..., 1][..., None, None, None], drift_b)
    return round_log_ratios(a, b)
