"""Serving under load: arrivals, popularity, the batching server, and the serving configurations.

    .venv/bin/python -m pytest tests/test_serving.py -q

Generator and server behaviour is tested on simulated time (`peftlab.testing.clock.VirtualClock`)
against fake backends that take a fixed simulated time per batch: every run is the same on every
machine, so time bounds and batch shapes are asserted exactly. The configurations themselves run
on a tiny study (2-layer Llama, sst2 + rte, full + LoRA, one seed) trained once per module, also
on simulated time, where their forwards take none; the bench stage's tests (tests/test_bench.py)
serve on real time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from peftlab.errors import PeftlabError
from peftlab.testing.clock import VirtualClock

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
    """A backend that takes `seconds` of `clock`'s simulated time per batch and answers zeros:
    a server of exactly known speed."""

    def __init__(self, clock: VirtualClock, seconds: float, names=("a", "b"),
                 per_adapter: bool = False):
        self.clock = clock
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
        self.clock.sleep(self.seconds)
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
    """serve_at_rate on simulated time: a fake backend's clock, else a fresh one (a real model's
    forward then takes no simulated time, so batches follow from the arrivals alone, not from
    how fast this machine runs the model)."""
    from peftlab.bench.serving import serve_at_rate

    clock = backend.clock if isinstance(backend, SleepyBackend) else VirtualClock()
    args = {"pattern": "uniform", "max_batch_size": 1, "max_wait_ms": 0.0, "seed": 0,
            "clock": clock}
    return serve_at_rate(backend, workload, tokenizer, **{**args, **kw})


def test_load_generator_stops_by_itself_within_its_time_bound_on_a_too_slow_server(
        fake_workload, tokenizer):
    backend = SleepyBackend(VirtualClock(), 0.2)  # 5 requests/s at most, offered 100/s
    row = _serve(backend, fake_workload, tokenizer, rate=100.0, max_requests=10_000,
                 max_seconds=1.0, drain_seconds=0.5, keep_logits=True)
    # window 1 s + drain 0.5 s + at most the one batch in flight (0.2 s)
    assert 1.0 + 0.5 <= row["wall_s"] <= 1.0 + 0.5 + 0.2, row["wall_s"]
    req = row["requests"]
    assert 40 < req["offered"] < 10_000  # the time bound, not the count, ended the arrivals
    assert req["done"] + req["unserved"] == req["offered"] and req["unserved"] > 0
    assert row["answered_once"] and sorted(row["answers"]) == list(range(req["offered"]))
    assert row["stopped_by"] == "drain_timeout" and not row["keeps_up"]
    assert row["throughput_rps"] == pytest.approx(5.0)  # the server's capacity, not 100/s


def test_load_generator_stops_by_itself_at_its_count_bound(fake_workload, tokenizer):
    backend = SleepyBackend(VirtualClock(), 0.2)
    row = _serve(backend, fake_workload, tokenizer, rate=1000.0, max_requests=30,
                 max_seconds=60.0, drain_seconds=1.0)
    window = row["arrival_window_s"]  # the 30th arrival, ~30 ms at 1000/s: far below 60 s
    assert row["requests"]["offered"] == 30 and window < 0.1
    assert window + 1.0 <= row["wall_s"] <= window + 1.0 + 0.2, row["wall_s"]
    assert row["requests"]["unserved"] > 0 and row["answered_once"]


def test_dynamic_batching_obeys_max_batch_max_wait_and_per_adapter_batches(fake_workload,
                                                                          tokenizer):
    # a burst: 64 requests within ~30 ms; each batch takes 20 ms, so the queue is always full
    mixed = SleepyBackend(VirtualClock(), 0.02, per_adapter=False)
    row = _serve(mixed, fake_workload, tokenizer, rate=2000.0, max_requests=64, max_seconds=5.0,
                 max_batch_size=8, max_wait_ms=50.0, drain_seconds=5.0)
    assert row["requests"]["done"] == 64
    sizes = [len(c) for c in mixed.calls]
    assert sizes == [8] * 8  # every batch full: the queue refills while one runs
    assert any(len(set(c)) == 2 for c in mixed.calls)  # mixed batches mix adapters
    per = SleepyBackend(VirtualClock(), 0.02, per_adapter=True)
    row = _serve(per, fake_workload, tokenizer, rate=2000.0, max_requests=64, max_seconds=5.0,
                 max_batch_size=8, max_wait_ms=50.0, drain_seconds=5.0)
    assert row["requests"]["done"] == 64 and all(len(set(c)) == 1 for c in per.calls)
    assert row["batches"]["adapters_per_batch_mean"] == 1.0
    # sparse arrivals (~200 ms apart) with a 2 ms wait: a batch never waits to fill up, so
    # requests further apart than the wait never share one
    sparse = SleepyBackend(VirtualClock(), 0.0)
    row = _serve(sparse, fake_workload, tokenizer, rate=5.0, max_requests=8, max_seconds=10.0,
                 max_batch_size=8, max_wait_ms=2.0, drain_seconds=2.0, keep_logits=True)
    assert row["requests"]["done"] == 8 and row["batches"]["count"] >= 5
    by_batch = {}
    for a in row["answers"].values():
        by_batch.setdefault(a.batch, []).append(a.arrival_ns)
    assert all(max(v) - min(v) <= 2e6 for v in by_batch.values())


def test_saturation_sweep_finds_the_capacity_of_a_server_of_known_speed(fake_workload,
                                                                        tokenizer):
    from peftlab.bench.serving import rising_rates, saturation_sweep

    backend = SleepyBackend(VirtualClock(), 0.02)  # batch 1, 20 ms: 50 requests/s

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

    clock = VirtualClock()
    backends = {"slow": SleepyBackend(clock, 0.01),  # 100 requests/s
                "quick": SleepyBackend(clock, 0.001)}  # 1000 requests/s
    out = serving_sweep(backends, {n: fake_workload for n in backends}, tokenizer,
                        rates=[10.0, 30.0, 300.0], pattern="distinct", max_batch_size=1,
                        max_wait_ms=0.0, max_requests=10_000, max_seconds=0.8,
                        drain_seconds=0.3, clock=clock)
    assert out["order"] == [[10.0, "slow"], [10.0, "quick"], [30.0, "quick"], [30.0, "slow"],
                            [300.0, "slow"], [300.0, "quick"]]
    assert out["slow"]["saturation_rate"] == 30.0 and out["slow"]["saturated"]
    assert out["quick"]["saturation_rate"] == 300.0 and not out["quick"]["saturated"]
    assert [r["run_index"] for r in out["quick"]["rows"]] == [1, 2, 5]


def test_p99_of_a_load_run_says_when_too_few_requests_back_it(fake_workload, tokenizer):
    row = _serve(SleepyBackend(VirtualClock(), 0.0), fake_workload, tokenizer, rate=200.0,
                 max_requests=40, max_seconds=5.0, drain_seconds=2.0)
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
    from peftlab.store import Store
    from peftlab.testing import tiny_study

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
    from peftlab.bench.serving_configs import serving_backends

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
    from peftlab.bench.serving_configs import serving_backends

    loader, lora, full, _ = served
    b = serving_backends(loader, lora, full, seed=0, configs=("merged", "mixed", "full"))
    merged, mixed = b["merged"].weight_bytes(), b["mixed"].weight_bytes()
    base = sum(p.numel() * p.element_size() for p in loader.merged(lora[0], 0).parameters())
    assert merged == pytest.approx(2 * base, rel=0.01)  # two copies of the whole model
    assert base < mixed < 1.5 * base  # one base plus two small adapters and heads
    assert b["full"].weight_bytes() == pytest.approx(merged, rel=0.01)
    with pytest.raises(PeftlabError, match="one fully fine-tuned artifact per task"):
        serving_backends(loader, lora, full[:1], seed=0, configs=("full",))


def test_every_configuration_serves_a_decoder_without_a_key_value_cache(served):
    """A loaded adapter's base keeps the pretrained config's use_cache: true while a full run's
    saved config has it off; served as loaded, merged, mixed and switched models would build a
    cache the full models do not (a configuration difference, not a serving strategy)."""
    from peftlab.bench.serving_configs import serving_backends

    loader, lora, full, _ = served
    assert loader.merged(lora[0], 0).config.use_cache  # what loading alone leaves
    backends = serving_backends(loader, lora, full, seed=0,
                                configs=("merged", "mixed", "switch", "full"),
                                fast_variant="fused")
    for name, b in backends.items():
        models = getattr(b, "models", None)
        models = list(models.values() if isinstance(models, dict) else models or [b.model])
        models = [getattr(m, "inner", m) for m in models]  # the fast path's wrapper
        assert models and all(m.config.use_cache is False for m in models), name


# -- the registry of serving configurations --------------------------------------------------------


class _Echo:
    """A plug-in configuration's backend: one model for every adapter (no weights)."""

    per_adapter = False

    def __init__(self, names):
        self.name, self.names, self.models = "echo", list(names), []


def _echo(loader, artifacts, seed, variant):
    return _Echo([a["name"] for a in artifacts])


def test_a_registered_serving_configuration_is_built_checked_and_reported(tmp_path):
    from peftlab.bench.serving_configs import SERVING_CONFIGS, ServingConfig, serving_backends
    from peftlab.errors import SpecError
    from peftlab.pipeline import load_study
    from peftlab.stages.report.serving import config_label, config_order, decision_line
    from peftlab.testing import tiny_spec, write_spec

    lora = [{"name": "a", "task": "sst2"}, {"name": "b", "task": "rte"}]
    echo = ServingConfig("echo", "one base, k echoes", "peft", _echo, shares_base=True)

    def check_serving(*configs):
        """Load a spec whose bench.serving.configs are `configs` (names are checked at load)."""
        spec = tiny_spec(tmp_path / "out", model_dir=tmp_path, model={"name": "minilm"},
                         bench={"serving": {"configs": list(configs)}})
        return load_study(write_spec(tmp_path / "spec.yaml", spec)).spec.bench.serving.configs

    def row(config, weights):
        return {"config": config, "pattern": "uniform", "offered_rate": 10.0, "k": 2,
                "sustained": True, "row": {"latency_ms": {"p99": 5.0, "p99_reliable": True},
                                           "memory": {"served_weight_bytes": weights}}}

    rows = [row("merged", 200_000_000), row("echo", 101_000_000)]
    with pytest.raises(SpecError, match="unknown serving configuration 'echo'"):
        serving_backends(None, lora, None, seed=0, configs=("echo",))
    with pytest.raises(SpecError, match=r"bench\.serving\.configs.*\['echo'\]"):
        check_serving("merged", "echo")
    assert decision_line(rows, 0.1) is None and config_label("echo") == "echo"
    with SERVING_CONFIGS.temporarily(echo):
        (backend,) = serving_backends(None, lora, None, seed=0, configs=("echo",)).values()
        assert backend.names == ["a", "b"]
        check_serving("merged", "echo")
        assert config_label("echo") == "one base, k echoes"
        assert config_order("echo") == len(SERVING_CONFIGS) - 1 > config_order("full")
        line = decision_line(rows, 0.1)
        assert line.startswith("one base, k echoes holds") and "up to 10 requests/s" in line
    with pytest.raises(SpecError, match="non-empty list without repeats"):
        check_serving("merged", "merged")
    # the fast configuration runs on the fast path only: never from a spec, never without it
    with pytest.raises(SpecError, match=r"\['fast'\]"):
        check_serving("fast")
    with pytest.raises(PeftlabError, match="fast path"):
        serving_backends(None, lora, None, seed=0, configs=("fast",))
