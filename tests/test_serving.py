"""Serving under load: arrivals, popularity, the batching server, and the serving configurations.

    .venv/bin/python -m pytest tests/test_serving.py -q

Generator and server behaviour is tested against fake backends that sleep (their speed does not
depend on how busy the machine is); the configurations themselves on a tiny study (2-layer Llama,
sst2 + rte, full + LoRA, one seed) trained once per module.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import stats

from peftlab.errors import PeftlabError

# -- arrivals and popularity -----------------------------------------------------------------------


def test_poisson_gaps_have_mean_one_over_rate_are_exponential_and_seeded():
    from peftlab.bench.load import poisson_arrivals

    rate = 50.0
    t = poisson_arrivals(rate, max_requests=20_000, max_seconds=1e9, seed=7)
    assert len(t) == 20_000 and np.all(np.diff(t) > 0)
    gaps = np.diff(np.concatenate([[0.0], t]))
    # mean 1/rate: the standard error of the mean of 20000 exponential gaps is 0.7%
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: cv = 1
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 1e-3
    np.testing.assert_array_equal(t, poisson_arrivals(rate, max_requests=20_000,
                                                      max_seconds=1e9, seed=7))
    assert not np.array_equal(t[:100], poisson_arrivals(rate, max_requests=100,
                                                        max_seconds=1e9, seed=8))
    # counts in a window are Poisson(rate x window): 1000 expected, sd 32
    counts = [len(poisson_arrivals(rate, max_requests=10**6, max_seconds=20.0, seed=s))
              for s in range(20)]
    assert abs(np.mean(counts) - 1000) < 4 * 32 / np.sqrt(20)
    w = poisson_arrivals(rate, max_requests=10**6, max_seconds=2.0, seed=1)
    assert w.max() < 2.0
    assert len(poisson_arrivals(1000.0, max_requests=10, max_seconds=60.0, seed=1)) == 10
    with pytest.raises(PeftlabError, match="rate"):
        poisson_arrivals(0.0, max_requests=10, max_seconds=1.0, seed=0)


def test_popularity_patterns_give_their_distributions():
    from peftlab.bench.load import adapter_popularity, popularity_probabilities

    k, n = 5, 40_000
    distinct = adapter_popularity("distinct", k, 12, seed=0)
    assert distinct.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert np.all(np.diff(distinct) != 0)  # each request for another adapter than the last
    assert adapter_popularity("identical", k, 50, seed=0).tolist() == [0] * 50
    for pattern, zipf in (("uniform", 1.5), ("skewed", 1.5), ("skewed", 0.8)):
        draws = adapter_popularity(pattern, k, n, seed=3, zipf_exponent=zipf)
        observed = np.bincount(draws, minlength=k)
        p = popularity_probabilities(pattern, k, zipf_exponent=zipf)
        assert stats.chisquare(observed, n * p).pvalue > 1e-3, (pattern, zipf, observed)
        np.testing.assert_array_equal(draws, adapter_popularity(pattern, k, n, seed=3,
                                                                zipf_exponent=zipf))
    skew = popularity_probabilities("skewed", k, zipf_exponent=1.5)
    np.testing.assert_allclose(skew, np.arange(1, 6) ** -1.5 / np.sum(np.arange(1, 6) ** -1.5))
    assert np.all(np.diff(skew) < 0)
    # a steeper law concentrates more on the most popular adapter
    assert popularity_probabilities("skewed", k, zipf_exponent=2.0)[0] > skew[0]
    with pytest.raises(PeftlabError, match="pattern"):
        adapter_popularity("zipfian", k, 10, seed=0)


# -- the server against fake backends -------------------------------------------------------------


class SleepyBackend:
    """A backend that takes `seconds` per batch and answers zeros: a server of known speed."""

    def __init__(self, seconds: float, names=("a", "b"), per_adapter: bool = False):
        self.names = list(names)
        self.seconds = seconds
        self.per_adapter = per_adapter
        self.name = "sleepy"
        self.models = []
        self.switches = 0
        self.switch_ms = []
        self.calls = []

    def forward(self, inputs, adapters):
        self.calls.append(list(adapters))
        time.sleep(self.seconds)
        return torch.zeros(inputs["input_ids"].shape[0], 2)

    def weight_bytes(self):
        return 0

    def describe(self):
        return {"config": self.name, "adapters": self.names, "k": len(self.names)}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from peftlab.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def fake_workload(tokenizer):
    from peftlab.bench.load import Workload

    texts = ["the movie was a delight", "a dull film", "it is one of the best films of the year"]
    feats = [{k: v for k, v in tokenizer(t).items() if k != "token_type_ids"} for t in texts]
    return Workload(names=["a", "b"], examples={"a": feats, "b": feats[::-1]})


def _serve(backend, workload, tokenizer, **kw):
    from peftlab.bench.serving import serve_at_rate

    args = {"pattern": "uniform", "max_batch_size": 1, "max_wait_ms": 0.0, "seed": 0}
    return serve_at_rate(backend, workload, tokenizer, **{**args, **kw})


def test_load_generator_stops_by_itself_within_its_time_bound_on_a_too_slow_server(
        fake_workload, tokenizer):
    backend = SleepyBackend(0.2)  # 5 requests/s at most, offered 100/s
    t0 = time.perf_counter()
    row = _serve(backend, fake_workload, tokenizer, rate=100.0, max_requests=10_000,
                 max_seconds=1.0, drain_seconds=0.5, keep_logits=True)
    wall = time.perf_counter() - t0
    # window 1 s + drain 0.5 s + at most the one batch in flight (0.2 s), plus start-up slack
    assert wall < 1.0 + 0.5 + 0.2 + 1.0, wall
    req = row["requests"]
    assert 40 < req["offered"] < 10_000  # the time bound, not the count, ended the arrivals
    assert req["done"] + req["unserved"] == req["offered"] and req["unserved"] > 0
    assert row["answered_once"] and sorted(row["answers"]) == list(range(req["offered"]))
    assert row["stopped_by"] == "drain_timeout" and not row["keeps_up"]
    assert row["throughput_rps"] < 8  # the server's capacity, not the offered 100/s


def test_load_generator_stops_by_itself_at_its_count_bound(fake_workload, tokenizer):
    backend = SleepyBackend(0.2)
    t0 = time.perf_counter()
    row = _serve(backend, fake_workload, tokenizer, rate=1000.0, max_requests=30,
                 max_seconds=60.0, drain_seconds=1.0)
    wall = time.perf_counter() - t0
    assert row["requests"]["offered"] == 30 and wall < 0.1 + 1.0 + 0.2 + 1.0, wall
    assert row["requests"]["unserved"] > 0 and row["answered_once"]


def test_dynamic_batching_obeys_max_batch_max_wait_and_per_adapter_batches(fake_workload,
                                                                          tokenizer):
    # a burst: 64 requests within ~30 ms; each batch takes 20 ms, so the queue is always full
    mixed = SleepyBackend(0.02, per_adapter=False)
    row = _serve(mixed, fake_workload, tokenizer, rate=2000.0, max_requests=64, max_seconds=5.0,
                 max_batch_size=8, max_wait_ms=50.0, drain_seconds=5.0)
    assert row["requests"]["done"] == 64
    sizes = [len(c) for c in mixed.calls]
    assert max(sizes) == 8 and sum(sizes) == 64 and sizes.count(8) >= 6
    assert any(len(set(c)) == 2 for c in mixed.calls)  # mixed batches mix adapters
    per = SleepyBackend(0.02, per_adapter=True)
    row = _serve(per, fake_workload, tokenizer, rate=2000.0, max_requests=64, max_seconds=5.0,
                 max_batch_size=8, max_wait_ms=50.0, drain_seconds=5.0)
    assert row["requests"]["done"] == 64 and all(len(set(c)) == 1 for c in per.calls)
    assert row["batches"]["adapters_per_batch_mean"] == 1.0
    # sparse arrivals (~200 ms apart) with a 2 ms wait: a batch never waits to fill up, so
    # requests further apart than the wait (plus scheduling slack) never share one
    sparse = SleepyBackend(0.0)
    row = _serve(sparse, fake_workload, tokenizer, rate=5.0, max_requests=8, max_seconds=10.0,
                 max_batch_size=8, max_wait_ms=2.0, drain_seconds=2.0, keep_logits=True)
    assert row["requests"]["done"] == 8 and row["batches"]["count"] >= 5
    by_batch = {}
    for a in row["answers"].values():
        by_batch.setdefault(a.batch, []).append(a.arrival_ns)
    assert all(max(v) - min(v) < 40e6 for v in by_batch.values())


def test_saturation_sweep_finds_the_capacity_of_a_server_of_known_speed(fake_workload,
                                                                        tokenizer):
    from peftlab.bench.serving import rising_rates, saturation_sweep

    backend = SleepyBackend(0.02)  # batch 1, 20 ms: 50 requests/s

    def at(rate):
        return _serve(backend, fake_workload, tokenizer, rate=rate, max_requests=10_000,
                      max_seconds=1.5, drain_seconds=0.5)

    sweep = saturation_sweep(at, [10.0, 20.0, 200.0, 400.0])
    rates = [r["offered_rate"] for r in sweep["rows"]]
    assert rates == [10.0, 20.0, 200.0]  # stops after the first unsustained rate
    assert [r["sustained"] for r in sweep["rows"]] == [True, True, False]
    assert sweep["saturation_rate"] == 20.0 and sweep["first_unsustained_rate"] == 200.0
    assert 15 < sweep["saturation_throughput"] < 26
    assert sweep["rows"][-1]["throughput_rps"] < 55  # saturated at the server's capacity
    bounded = saturation_sweep(at, [10.0], p99_bound_ms=1.0)  # a 20 ms request cannot meet it
    assert bounded["saturation_rate"] is None and bounded["rows"][0]["keeps_up"]
    assert rising_rates(5, 2, 4) == [5.0, 10.0, 20.0, 40.0]


def test_serving_sweep_interleaves_configurations_and_stops_each_at_its_capacity(
        fake_workload, tokenizer):
    from peftlab.bench.serving import serving_sweep

    backends = {"slow": SleepyBackend(0.01), "quick": SleepyBackend(0.001)}  # 100/s, 1000/s
    out = serving_sweep(backends, {n: fake_workload for n in backends}, tokenizer,
                        rates=[10.0, 30.0, 300.0], pattern="distinct", max_batch_size=1,
                        max_wait_ms=0.0, max_requests=10_000, max_seconds=0.8,
                        drain_seconds=0.3)
    assert out["order"] == [[10.0, "slow"], [10.0, "quick"], [30.0, "quick"], [30.0, "slow"],
                            [300.0, "slow"], [300.0, "quick"]]
    assert out["slow"]["saturation_rate"] == 30.0 and out["slow"]["saturated"]
    assert out["quick"]["saturation_rate"] == 300.0 and not out["quick"]["saturated"]
    assert [r["run_index"] for r in out["quick"]["rows"]] == [1, 2, 5]


def test_p99_of_a_load_run_says_when_too_few_requests_back_it(fake_workload, tokenizer):
    row = _serve(SleepyBackend(0.0), fake_workload, tokenizer, rate=200.0, max_requests=40,
                 max_seconds=5.0, drain_seconds=2.0)
    lat = row["latency_ms"]
    assert lat["count"] == 40 and lat["p99_note"] == "too few requests (n < 100)"
    assert lat["p99_ci"] is None and lat["p50_ci"][0] <= lat["p50"] <= lat["p50_ci"][1]


# -- the serving configurations on a tiny trained study ------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama_dir, glue_dir):
    """(loader, lora artifacts, full artifacts, workload) of a tiny trained study."""
    from peftlab.artifacts import ModelLoader, run_artifact
    from peftlab.bench.load import workload_from_frames
    from peftlab.context import Context
    from peftlab.fixtures import tiny_study
    from peftlab.store import Store

    tmp = tmp_path_factory.mktemp("serving-study")
    study = tiny_study(tmp, model_dir=tiny_llama_dir, glue_dir=glue_dir, seeds=(1,),
                       methods=("full", "lora"), eval_samples=16)
    store = Store(study.output_dir, create=False)
    try:
        ctx = Context(study=study, store=store)
        runs = study.runs()
        lora = [run_artifact(ctx, next(r for r in runs if r.task == t and r.method == "lora"))
                for t in ("sst2", "rte")]
        full = [run_artifact(ctx, next(r for r in runs if r.task == t and r.method == "full"))
                for t in ("sst2", "rte")]
        frames = {a["name"]: ctx.data.split(a["task"], "eval") for a in lora}
    finally:
        store.close()
    loader = ModelLoader(study.spec.model.model_dump(mode="json"), "cpu")
    workload = workload_from_frames(frames, loader.tokenizer, max_length=48)
    return loader, lora, full, workload


def _alone(model, tokenizer, example, **kw):
    """Logits of one example served alone (a batch of one, no padding)."""
    from peftlab.encode import make_collator

    inputs = {k: v for k, v in make_collator(tokenizer)([example]).items() if k != "labels"}
    with torch.inference_mode():
        return model(**inputs, **kw).logits.float().numpy()[0]


@pytest.mark.parametrize("config", ["mixed", "switch", "merged", "full", "fast"])
def test_every_configuration_answers_each_request_once_with_its_adapters_logits(served, config):
    from peftlab.bench.gate import compare_logits
    from peftlab.bench.serving import serving_backends

    loader, lora, full, workload = served
    configs = () if config == "fast" else (config,)
    backend = serving_backends(loader, lora, full, seed=0, configs=configs,
                               fast_variant="fused" if config == "fast" else None)[config]
    names = backend.names
    # full models serve the same requests under their own names: same tasks, same order
    wl = workload if config != "full" else type(workload)(
        names=names, examples=dict(zip(names, workload.examples.values(), strict=True)))
    row = _serve(backend, wl, loader.tokenizer, rate=400.0, pattern="uniform", max_requests=48,
                 max_seconds=10.0, max_batch_size=8, max_wait_ms=20.0, drain_seconds=30.0,
                 keep_logits=True)
    assert row["requests"] == {"scheduled": 48, "offered": 48, "done": 48, "unserved": 0,
                               "error": 0}, row["error"]
    answers = row["answers"]
    assert sorted(answers) == list(range(48)) and row["answered_once"]
    assert row["batches"]["size_mean"] > 1  # batching happened: padding is exercised
    if config == "mixed":
        assert row["batches"]["adapters_per_batch_mean"] > 1  # mixed batches really mixed
    if config in ("switch", "fast"):
        assert row["switches"] > 0 and row["switch_ms"]["count"] == row["switches"]
    refs = ({a["name"]: loader.full(a) for a in full} if config == "full"
            else {a["name"]: loader.adapters([a], 1) for a in lora})
    for name in names:
        mine = [a for a in answers.values() if a.adapter == name]
        assert mine
        served_logits = np.stack([a.logits for a in mine])
        ref = np.stack([_alone(refs[name], loader.tokenizer, a.example) for a in mine])
        check = compare_logits(f"{config}[{name}]", served_logits, "alone", ref, tolerance=1e-4)
        assert check["passed"], check
    assert row["memory"]["rss_peak_bytes"] > 0 and row["memory"]["served_weight_bytes"] > 0
    assert row["latency_ms"]["count"] == 48


def test_k_merged_copies_hold_more_weights_than_one_base_with_adapters(served):
    from peftlab.bench.serving import serving_backends

    loader, lora, full, _ = served
    b = serving_backends(loader, lora, full, seed=0, configs=("merged", "mixed", "full"))
    merged, mixed = b["merged"].weight_bytes(), b["mixed"].weight_bytes()
    base = sum(p.numel() * p.element_size() for p in loader.merged(lora[0], 0).parameters())
    assert merged == pytest.approx(2 * base, rel=0.01)  # two copies of the whole model
    assert base < mixed < 1.5 * base  # one base plus two small adapters and heads
    assert b["full"].weight_bytes() == pytest.approx(merged, rel=0.01)
    with pytest.raises(PeftlabError, match="one fully fine-tuned artifact per task"):
        serving_backends(loader, lora, full[:1], seed=0, configs=("full",))
