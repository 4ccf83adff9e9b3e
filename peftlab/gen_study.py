"""The represent, bench and report stages of a generation study (the pipeline calls these when
every task of the study is a generation task; `peftlab.generation.is_generative`).

    represent(ctx)   # prompt representations of base and runs; debiased linear CKA per layer
    bench(ctx)       # generate() per token: TTFT, time per output token, latency, tokens/s
    report(ctx)      # report.md / report.html: quality, learned rule, samples, drift,
                     # forgetting, weight space, cost

Drift (RQ1): the base and every finished run read the same fixed evaluation prompts
(`generation.probe_inputs`); each layer's hidden states are pooled at the last prompt token (what
the first generated token is computed from) and as the mean over prompt tokens, and each run is
compared with the base by debiased linear CKA (`peftlab.similarity.linear_cka`), per layer, with
the seed-to-seed control (runs of one method against each other) beside it. The embedding layer
is left out of layer means (it is the same lookup in every model that does not train it).
Forgetting (held-out LM loss through each model's own LM head, off-task probes) and the weight
space (each adapted matrix's update) are measured by the forgetting and drift stages, which load
generation runs as causal LMs and write the tables they write for classification (`forgetting`,
`weights`); the report shows them beside the drift, and the RQ1 answer compares the methods'
LM-loss change paired by seed.

Deployment cost (RQ2): every mode serves `generate()` with a KV cache, greedy, and decodes
exactly `generation.bench_new_tokens` tokens (EOS ignored), so every mode does the same work. A
stopping criterion timestamps every step of one `generate` call: time to first token (TTFT,
prefill plus the first token), time per output token (TPOT, the mean gap after the first),
end-to-end latency and output tokens per second (batch x tokens / latency). Measurement follows
the paired design of classification latency (`peftlab.latency_design`): blocks are fresh
processes holding every mode's model, each serving rounds in which every condition is measured
twice in a drawn order and its mirror (ABBA) on the same prompts; a comparison's observation is
the round's log ratio, its unit the block, and an A/A control (the merged model measured under
a second label) gives the noise floor. Before any timing, the correctness gate: the unmerged
adapter, the merged model and the adapter reloaded from disk must give identical greedy outputs
on the gate prompts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.gen_tables import _f, _t_interval, forgetting_lines, weight_lines

if TYPE_CHECKING:
    from peftlab.context import Context

GEN_DRIFT = "gen_drift"
GEN_BENCH = "gen_bench"


def _done_runs(ctx: Context) -> list[tuple[Any, dict[str, Any]]]:
    """(RunConfig, record) of every finished run, in plan order."""
    from peftlab.records import RunRecord, read_one

    out = []
    for rc in ctx.study.runs():
        rec = read_one(ctx.store, RunRecord, rc.run_id)
        if rec is not None and rec.status == "done":
            out.append((rc, rec.dump()))
    return out


def _template(ctx: Context, task: Any) -> str:
    return ctx.study.spec.generation.prompt_template or task.prompt_template or "{input}"


def _prompts(ctx: Context, task_name: str, n: int | None = None) -> list[str]:
    from peftlab.generation import inputs_of, prompt_text

    task = ctx.data.task(task_name)
    gen = ctx.study.spec.generation
    inputs = inputs_of(ctx.data.split(task_name, "eval"))[:n]
    return [prompt_text(_template(ctx, task), t, None if not gen.chat_template else
                        _tokenizer(ctx), chat=gen.chat_template) for t, _ in inputs]


def _tokenizer(ctx: Context) -> Any:
    from peftlab.artifacts import ModelLoader

    return ModelLoader(ctx.study.spec.model, ctx.device).tokenizer


def _artifact(ctx: Context, rec: dict[str, Any]) -> Path:
    return ctx.store.root / rec["artifact"]


# ---------------------------------------------------------------------------------------------
# represent + drift


def pooled_states(model: Any, tokenizer: Any, prompts: list[str], *, batch_size: int = 16
                  ) -> dict[str, np.ndarray]:
    """{"last": [layers+1, n, d], "mean": [layers+1, n, d]} float32: every layer's hidden
    states (embedding output first) at the last prompt token and averaged over prompt tokens
    (right padding; the attention mask says which positions are tokens)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    last, mean = [], []
    dev = next(model.parameters()).device
    try:
        for s in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[s:s + batch_size], return_tensors="pt", padding=True).to(dev)
            with torch.inference_mode():
                hs = model(**enc, output_hidden_states=True).hidden_states
            h = torch.stack(hs).float()  # [L+1, b, t, d]
            mask = enc["attention_mask"].float()  # [b, t]
            idx = enc["attention_mask"].sum(1) - 1
            last.append(h[:, torch.arange(h.shape[1]), idx].cpu().numpy())
            mean.append(((h * mask[None, :, :, None]).sum(2)
                         / mask.sum(1)[None, :, None]).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return {"last": np.concatenate(last, axis=1), "mean": np.concatenate(mean, axis=1)}


def represent(ctx: Context) -> None:
    """Pooled prompt representations of the base and every finished run (kept in
    `represent_gen/<task>/<model>.npz`), then per run and pooling the debiased linear CKA to the
    base per layer, and between runs of one method (the seed-to-seed control): table
    `gen_drift`, keys "<task>/<pooling>/<run id>" and "<task>/<pooling>/seeds/<a>~<b>"."""
    from peftlab.generation import load_causal_lm, load_run_lm
    from peftlab.similarity import linear_cka

    spec = ctx.study.spec
    runs = _done_runs(ctx)
    for t in spec.tasks:
        prompts = _prompts(ctx, t.name, spec.generation.probe_inputs)
        folder = ctx.store.path("represent_gen", t.name)
        folder.mkdir(parents=True, exist_ok=True)

        def states(key: str, load: Any, folder: Path = folder,
                   prompts: list[str] = prompts) -> dict[str, np.ndarray]:
            path = folder / f"{key}.npz"
            if path.is_file():
                with np.load(path) as z:
                    return {k: z[k] for k in z.files}
            model, tok = load()
            out = pooled_states(model, tok, prompts)
            del model
            np.savez(path, **out)
            return out

        base = states("base", lambda: load_causal_lm(spec.model, ctx.device))
        reps: dict[str, dict[str, np.ndarray]] = {}
        for rc, rec in runs:
            if rc.task != t.name:
                continue
            reps[rc.run_id] = states(rc.run_id, lambda rc=rc, rec=rec: load_run_lm(
                spec.model, _artifact(ctx, rec), rc.method_type, ctx.device))
        items = []
        by_method: dict[str, list[str]] = {}
        for rc, _ in runs:
            if rc.task == t.name:
                by_method.setdefault(rc.method, []).append(rc.run_id)
        meta = {r.run_id: r for r, _ in runs}
        for pooling in ("last", "mean"):
            for run_id, x in reps.items():
                per_layer = _cka_layers(linear_cka, base[pooling], x[pooling])
                rc = meta[run_id]
                items.append((f"{t.name}/{pooling}/{run_id}", {
                    "task": t.name, "pooling": pooling, "kind": "base_vs_run",
                    "run_id": run_id, "method": rc.method, "seed": rc.seed,
                    "per_layer": per_layer, "mean": _layer_mean(per_layer),
                    "n": len(prompts)}))
            for method, ids in by_method.items():
                for i, a in enumerate(ids):
                    for b in ids[i + 1:]:
                        per_layer = _cka_layers(linear_cka, reps[a][pooling], reps[b][pooling])
                        items.append((f"{t.name}/{pooling}/seeds/{a}~{b}", {
                            "task": t.name, "pooling": pooling, "kind": "seed_control",
                            "method": method, "run_id": f"{a}~{b}", "per_layer": per_layer,
                            "mean": _layer_mean(per_layer), "n": len(prompts)}))
        ctx.store.put_many(GEN_DRIFT, items)
        for key, rec in items:
            if rec["kind"] == "base_vs_run":
                ctx.console.print(f"represent {key}: mean debiased CKA to base "
                                  f"{_f(rec['mean'], 4)}")


def _cka_layers(cka: Any, x: np.ndarray, y: np.ndarray) -> list[float | None]:
    """Debiased linear CKA of x and y ([layers, n, d]) per layer; None where undefined."""
    from peftlab.errors import DegenerateInputError

    out: list[float | None] = []
    for a, b in zip(x, y, strict=True):
        try:
            v = float(cka(a.astype(np.float64), b.astype(np.float64), debiased=True))
        except DegenerateInputError:
            v = math.nan
        out.append(v if math.isfinite(v) else None)
    return out


def _layer_mean(per_layer: list[float | None]) -> float | None:
    """Mean over transformer layers (the embedding output, index 0, left out)."""
    vals = [v for v in per_layer[1:] if v is not None]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------------------------
# bench


class StepClock:
    """A stopping criterion that never stops and timestamps every decoding step (perf_counter,
    seconds); `generate` calls it once per new token, after the token is chosen."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def timed_generate(model: Any, enc: Any, new_tokens: int, pad_id: int,
                   adapter_names: list[str] | None = None) -> dict[str, float]:
    """One greedy `generate` of exactly `new_tokens` tokens per row with a KV cache; times in
    seconds: ttft (call to first token), tpot (mean gap between later tokens), latency."""
    import torch
    from transformers import StoppingCriteriaList

    clock = StepClock()
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id,
                       stopping_criteria=StoppingCriteriaList([clock]), temperature=None,
                       top_p=None, top_k=None, **extra)
    end = time.perf_counter()
    ts = clock.times
    return {"ttft": ts[0] - t0, "tpot": (ts[-1] - ts[0]) / max(len(ts) - 1, 1),
            "latency": end - t0}


def greedy_outputs(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int
                   ) -> list[str]:
    from peftlab.generation import generate

    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, num_beams=1,
                    stop=(), batch_size=len(prompts))


def gate(model_spec: Any, artifact: Path, method_type: str, prompts: list[str], device: str,
         max_new_tokens: int) -> dict[str, Any]:
    """Greedy outputs of the adapter unmerged, merged and reloaded from disk on `prompts`:
    {"passed", "outputs": {variant: [...]}, "mismatches": [prompt index]}."""
    from peftlab.generation import load_run_lm

    unmerged, tok = load_run_lm(model_spec, artifact, method_type, device)
    out_u = greedy_outputs(unmerged, tok, prompts, max_new_tokens)
    merged = unmerged.merge_and_unload()
    out_m = greedy_outputs(merged, tok, prompts, max_new_tokens)
    del merged, unmerged
    reloaded, tok = load_run_lm(model_spec, artifact, method_type, device)
    out_r = greedy_outputs(reloaded, tok, prompts, max_new_tokens)
    bad = [i for i, (a, b, c) in enumerate(zip(out_u, out_m, out_r, strict=True))
           if not a == b == c]
    return {"passed": not bad, "mismatches": bad,
            "outputs": {"unmerged": out_u, "merged": out_m, "reloaded": out_r}}


def bench(ctx: Context) -> None:
    """The gate, then the block design: `generation.bench_blocks` fresh processes
    (`python -m peftlab.gen_study JOB`), their rounds stored in `gen_bench` (key
    "block/<i>"), the gate in "gate/<run id>"; blocks already stored are kept."""
    spec = ctx.study.spec
    gen = spec.generation
    runs = _done_runs(ctx)
    first = spec.seeds[0]
    full = next((rec for rc, rec in runs if rc.method_type == "full" and rc.seed == first), None)
    peft = [(rc, rec) for rc, rec in runs if rc.method_type != "full"]
    lead = next(((rc, rec) for rc, rec in peft if rc.seed == first), None)
    if lead is None:
        ctx.console.print("bench: no finished adapter run of the first seed: nothing to serve")
        return
    task = lead[0].task
    prompts = _prompts(ctx, task)
    gate_key = f"gate/{lead[0].run_id}"
    if ctx.store.get(GEN_BENCH, gate_key) is None:
        g = gate(spec.model, _artifact(ctx, lead[1]), lead[0].method_type, prompts[:8],
                 ctx.device, gen.max_new_tokens)
        ctx.store.put(GEN_BENCH, gate_key, {"kind": "gate", "run_id": lead[0].run_id, **g})
    g = ctx.store.get(GEN_BENCH, gate_key)
    ctx.console.print(f"bench gate {lead[0].run_id}: unmerged = merged = reloaded on "
                      f"{len(g['outputs']['unmerged'])} prompts: "
                      f"{'passed' if g['passed'] else 'FAILED at ' + str(g['mismatches'])}")
    if not g["passed"]:
        ctx.console.print("[red]bench: the gate failed: no timing of a model that is wrong[/]")
        return
    modes = [m for m in (spec.bench.modes or ["base", "full", "unmerged", "merged", "multi",
                                               "mixed"])]
    adapters = [str(_artifact(ctx, rec)) for rc, rec in peft if rc.method == lead[0].method]
    if len(adapters) < 2:  # multi and mixed serve two adapters: the one run's, loaded twice
        adapters = adapters * 2
    job = {"model": spec.model.model_dump(mode="json"), "device": ctx.device,
           "prompts": prompts, "modes": modes, "batch_sizes": spec.bench.batch_sizes,
           "new_tokens": gen.bench_new_tokens, "rounds": gen.bench_rounds,
           "requests": gen.bench_requests, "threads": spec.bench.threads,
           "full": str(_artifact(ctx, full)) if full else None,
           "adapter": adapters[0], "adapters": adapters, "method_type": lead[0].method_type}
    stamp = {k: v for k, v in job.items() if k != "device"}
    for i in range(gen.bench_blocks):
        key = f"block/{i}"
        old = ctx.store.get(GEN_BENCH, key)
        if old is not None and old.get("stamp") == stamp:
            continue
        t0 = time.perf_counter()
        out = _run_block(dict(job, seed=i))
        ctx.store.put(GEN_BENCH, key, {"kind": "block", "block": i, "stamp": stamp,
                                       "wall_s": time.perf_counter() - t0, **out})
        ctx.console.print(f"bench block {i + 1}/{gen.bench_blocks}: {len(out['rounds'])} "
                          f"rounds in {time.perf_counter() - t0:.0f} s")


def _run_block(job: dict[str, Any]) -> dict[str, Any]:
    """One block in a fresh process: its rounds as JSON."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="peftlab-genbench-") as d:
        path = Path(d) / "job.json"
        path.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "peftlab.gen_study", str(path)],
                              capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            raise RuntimeError(f"bench block failed: {proc.stderr.strip()[-2000:]}")
        return json.loads((Path(d) / "out.json").read_text())


def conditions(job: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(label, mode, batch size) of every timed condition; the A/A control is the merged model
    under the label "merged (again)". mixed needs a batch of several adapters (b > 1); multi
    and mixed get at least two adapters (`bench` loads a lone run's adapter twice)."""
    out = []
    for b in job["batch_sizes"]:
        for mode in job["modes"]:
            if mode == "full" and not job["full"]:
                continue
            if mode == "mixed" and b == 1:
                continue
            out.append((mode, mode, b))
        if "merged" in job["modes"]:
            out.append(("merged (again)", "merged", b))
    return out


def block_main(job_path: str) -> None:
    """A block process: load every mode, serve rounds, write out.json beside the job."""
    import random

    import torch
    from peft import PeftModel

    from peftlab.generation import load_causal_lm, load_run_lm

    job = json.loads(Path(job_path).read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    dev = job["device"]
    spec = job["model"]
    models: dict[str, Any] = {}
    base, tok = load_causal_lm(spec, dev)
    models["base"] = base
    if "full" in job["modes"] and job["full"]:
        models["full"], _ = load_run_lm(spec, Path(job["full"]), "full", dev)
    if {"unmerged", "multi", "mixed"} & set(job["modes"]):
        b2, _ = load_causal_lm(spec, dev, method_type=job["method_type"])
        pm = PeftModel.from_pretrained(b2, job["adapters"][0], adapter_name="a0",
                                       is_trainable=False)
        for i, a in enumerate(job["adapters"][1:], start=1):
            pm.load_adapter(a, adapter_name=f"a{i}", is_trainable=False)
        pm.set_adapter("a0")
        pm.eval()
        models["unmerged"] = models["multi"] = models["mixed"] = pm
    if "merged" in job["modes"]:
        m, _ = load_run_lm(spec, Path(job["adapter"]), job["method_type"], dev)
        models["merged"] = m.merge_and_unload().eval()
    conds = conditions(job)
    rng = random.Random(job["seed"])
    tok.padding_side = "left"
    prompts = job["prompts"]
    k = len(job["adapters"])
    rounds: list[dict[str, Any]] = []
    served = 0  # request counter: which prompts, and which adapter `multi` switches to

    def request(label: str, mode: str, b: int, idx: int) -> dict[str, float]:
        enc = tok([prompts[(idx + j) % len(prompts)] for j in range(b)], return_tensors="pt",
                  padding=True).to(dev)
        model = models[mode]
        names = None
        if mode == "multi":  # one adapter per request, switched inside the timed stream
            t0 = time.perf_counter()
            model.set_adapter(f"a{idx % k}")
            switch = time.perf_counter() - t0
        elif mode == "mixed":  # several adapters in one batch
            names = [f"a{j % k}" for j in range(b)]
            switch = 0.0
        else:
            if mode == "unmerged":
                model.set_adapter("a0")
            switch = 0.0
        r = timed_generate(model, enc, job["new_tokens"], tok.pad_token_id, names)
        r["ttft"] += switch
        r["latency"] += switch
        return r

    # warm-up: every condition once
    for label, mode, b in conds:
        request(label, mode, b, 0)
    for _ in range(job["rounds"]):
        for b in job["batch_sizes"]:
            order = [c for c in conds if c[2] == b]
            rng.shuffle(order)
            segs: dict[str, list[dict[str, float]]] = {c[0]: [] for c in order}
            idx0 = served
            for seq in (order, order[::-1]):  # ABBA: the order, then its mirror
                for label, mode, bb in seq:
                    for r in range(job["requests"]):
                        # the same prompts for every condition of the round
                        segs[label].append(dict(request(label, mode, bb, idx0 + r),
                                                segment=int(seq is not order)))
            served += job["requests"]
            rounds.append({"batch_size": b, "conditions": segs})
    Path(job_path).with_name("out.json").write_text(json.dumps({
        "rounds": rounds, "threads": torch.get_num_threads(), "new_tokens": job["new_tokens"],
        "conditions": [list(c) for c in conds]}))


def bench_summary(blocks: list[dict[str, Any]], *, alpha: float, margin: float
                  ) -> dict[str, Any]:
    """Per (mode, batch size): median TTFT, TPOT, latency and tokens/s over every request of
    every block; per comparison (unmerged vs merged, merged vs full, base vs merged, the A/A
    control) and metric (ttft, tpot, latency): `latency_design.analyse_pairs` over blocks of
    round log ratios (segment medians), with the A/A control's interval as noise floor."""
    from peftlab.latency_design import analyse_pairs, log_latency, noise_floor

    if not blocks:
        return {"modes": [], "pairs": []}
    new_tokens = blocks[0]["new_tokens"]
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    for blk in blocks:
        for rnd in blk["rounds"]:
            for label, reqs in rnd["conditions"].items():
                samples.setdefault((label, rnd["batch_size"]), []).extend(reqs)
    modes = []
    for (label, b), reqs in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lat = float(np.median([r["latency"] for r in reqs]))
        modes.append({"mode": label, "batch_size": b, "requests": len(reqs),
                      "ttft_ms": 1e3 * float(np.median([r["ttft"] for r in reqs])),
                      "tpot_ms": 1e3 * float(np.median([r["tpot"] for r in reqs])),
                      "latency_ms": 1e3 * lat, "tokens_per_s": b * new_tokens / lat})
    comparisons = [("unmerged_vs_merged", "unmerged", "merged"),
                   ("merged_vs_full", "merged", "full"), ("merged_vs_base", "merged", "base"),
                   ("multi_vs_unmerged", "multi", "unmerged"),
                   ("mixed_vs_unmerged", "mixed", "unmerged"),
                   ("aa", "merged (again)", "merged")]
    batch_sizes = sorted({b for _, b in samples})
    pairs = []
    for metric in ("ttft", "tpot", "latency"):
        for b in batch_sizes:
            obs: dict[str, list[list[float]]] = {}
            for name, a, c in comparisons:
                per_block = []
                for blk in blocks:
                    ratios = []
                    for rnd in blk["rounds"]:
                        if rnd["batch_size"] != b or a not in rnd["conditions"] \
                                or c not in rnd["conditions"]:
                            continue
                        ratios.append(_log(rnd["conditions"][a], metric, log_latency)
                                      - _log(rnd["conditions"][c], metric, log_latency))
                    if ratios:
                        per_block.append(ratios)
                if per_block:
                    obs[name] = per_block
            aa = analyse_pairs(obs["aa"], alpha=alpha) if "aa" in obs else None
            floor = noise_floor(aa) if aa else None
            for name, a, c in comparisons:
                if name not in obs:
                    continue
                res = aa if name == "aa" else analyse_pairs(
                    obs[name], alpha=alpha, margin=margin, floor=floor)
                pairs.append({"comparison": name, "a": a, "b": c, "metric": metric,
                              "batch_size": b, **res})
    return {"modes": modes, "pairs": pairs, "new_tokens": new_tokens}


def _log(reqs: list[dict[str, float]], metric: str, log_latency: Any) -> float:
    segs: dict[int, list[float]] = {}
    for r in reqs:
        segs.setdefault(int(r.get("segment", 0)), []).append(r[metric])
    return log_latency(list(segs.values()))


# ---------------------------------------------------------------------------------------------
# report


def _shown(output: str) -> str:
    """A generated output for a table cell: an empty one (the model stopped at once, e.g. on
    the stop string) said in words, not left as a blank cell."""
    return output if str(output).strip() else "(empty: stopped before any text)"


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def report(ctx: Context, extra: list[str] | None = None) -> None:
    """report.md and report.html of a generation study, from stored results only (+ `extra`
    Markdown lines before the provenance: the report stage's "Serving on vLLM")."""
    from peftlab.generation import judge
    from peftlab.metrics import METRICS
    from peftlab.records import GenerationBaselineRecord
    from peftlab.store import atomic_write_text

    spec = ctx.study.spec
    alpha = spec.stats.alpha
    runs = _done_runs(ctx)
    lines = [f"# {spec.name}: generation study report", "",
             spec.description or "", ""]
    baselines = [GenerationBaselineRecord.parse(r) for r in ctx.store.records("gen_baselines")]
    drift = ctx.store.records(GEN_DRIFT)
    forgetting = ctx.store.records("forgetting")
    weight_recs = ctx.store.records("weights")
    bench_recs = ctx.store.records(GEN_BENCH)
    blocks = [r for r in bench_recs if r.get("kind") == "block"]
    gates = [r for r in bench_recs if r.get("kind") == "gate"]
    summary = bench_summary(blocks, alpha=alpha, margin=spec.stats.latency_margin)
    answers: list[str] = []
    body: list[str] = []
    for t in spec.tasks:
        task = ctx.data.task(t.name)
        main = task.metrics[0]
        hib = METRICS.get(main).higher_is_better
        tb = {b.name: b.dump() for b in baselines if b.task == t.name}
        truns = [(rc, rec) for rc, rec in runs if rc.task == t.name]
        methods = list(dict.fromkeys(rc.method for rc, _ in truns))
        verdicts = {rc.run_id: judge(main, hib, rec["metrics"], tb) for rc, rec in truns}
        learned = sum(v["learned"] for v in verdicts.values())
        decoding = ("greedy" if spec.generation.num_beams == 1
                    else f"beam {spec.generation.num_beams}")
        body += [f"## Task {t.name}: quality of the generated text", "",
                 f"Evaluation: {ctx.data.split(t.name, 'eval')['input'].nunique()} inputs, "
                 f"every reference of each; training: "
                 f"{ctx.data.split(t.name, 'train')['input'].nunique()} inputs x up to "
                 f"{spec.generation.train_references or 'all'} references. Decoding: "
                 f"{decoding}, at most {spec.generation.max_new_tokens} new tokens, stop at EOS or "
                 f"{spec.generation.stop!r}. Intervals: {100 * (1 - alpha):g}% bootstrap over "
                 "inputs (per run), t interval over seeds (method means).", "",
                 "### Methods (mean over seeds)", "",
                 "| method | runs | " + " | ".join(task.metrics) + " |",
                 "|---|---|" + "---|" * len(task.metrics)]
        means: dict[str, dict[str, tuple]] = {}
        for m in methods:
            recs = [rec for rc, rec in truns if rc.method == m]
            cells = []
            for name in task.metrics:
                est = _t_interval([r["metrics"][name]["value"] for r in recs], alpha)
                means.setdefault(m, {})[name] = est
                cells.append(f"{_f(est[0], 2)} [{_f(est[1], 2)}, {_f(est[2], 2)}]")
            body.append(f"| {m} | {len(recs)} | " + " | ".join(cells) + " |")
        for name, b in tb.items():
            cells = [f"{_f(b['metrics'][n]['value'], 2)} [{_f(b['metrics'][n]['ci_low'], 2)}, "
                     f"{_f(b['metrics'][n]['ci_high'], 2)}]" for n in task.metrics]
            body.append(f"| baseline: {name} | - | " + " | ".join(cells) + " |")
        body += ["", "Baselines are the base model on the same prompts (zero-shot, and "
                 f"few-shot with {spec.generation.few_shot} solved training inputs) and, for "
                 "meaning representations, the template (slot values joined into a sentence). "
                 "For scale: the LoRA paper (Hu et al. 2021, Table 3) reports E2E BLEU 68.2 "
                 "(GPT-2 Medium, full fine-tuning) and 70.4 (LoRA) after training on the whole "
                 "42k-row training set.", "",
                 "### Runs and the learned rule", "",
                 f"A run learned when the {'lower' if hib else 'upper'} bound of its {main} "
                 "interval is beyond every baseline's value; comparisons of runs that did not "
                 "learn are void.", "",
                 "| run | method | seed | " + " | ".join(task.metrics)
                 + " | learned | train s | decode s |",
                 "|---|---|---|" + "---|" * len(task.metrics) + "---|---|---|"]
        for rc, rec in truns:
            cells = [f"{_f(rec['metrics'][n]['value'], 2)} [{_f(rec['metrics'][n]['ci_low'], 2)}"
                     f", {_f(rec['metrics'][n]['ci_high'], 2)}]" for n in task.metrics]
            v = verdicts[rc.run_id]
            body.append(f"| {rc.run_id} | {rc.method} | {rc.seed} | " + " | ".join(cells)
                        + f" | {'yes' if v['learned'] else 'no: ' + _cell(v['reason'])} | "
                        f"{_f(rec.get('train_time_s'), 0)} | {_f(rec.get('eval_time_s'), 0)} |")
        # paired over seeds: method difference on the main metric
        if len(methods) >= 2 and learned == len(truns):
            a, b = methods[-1], methods[0]
            by_seed = {(rc.method, rc.seed): rec["metrics"][main]["value"] for rc, rec in truns}
            diffs = [by_seed[(a, s)] - by_seed[(b, s)] for s in spec.seeds
                     if (a, s) in by_seed and (b, s) in by_seed]
            d = _t_interval(diffs, alpha)
            body += ["", f"{a} minus {b} on {main}, paired by seed (n = {len(diffs)}): "
                     f"{_f(d[0], 2)} [{_f(d[1], 2)}, {_f(d[2], 2)}] (t interval)."]
        body += ["", f"{learned} of {len(truns)} runs learned.", ""]
        # sample outputs
        k = spec.generation.samples
        if k:
            gens = ctx.store.records("generations")
            by = {(g["run_id"], g["input"]): g for g in gens if g["task"] == t.name}
            first_of = {m: next((rc.run_id for rc, _ in truns if rc.method == m
                                 and rc.seed == spec.seeds[0]), None) for m in methods}
            zs = f"baseline:{t.name}:zero_shot"
            body += ["### Sample outputs (the first evaluation inputs; runs of the first seed)",
                     "", "| input | a reference | base (zero-shot) | "
                     + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
            for i in range(k):
                ref = by.get((zs, i))
                if ref is None:
                    break
                row = [ref["input_text"], ref["references"][0], _shown(ref["output"])]
                row += [_shown(by.get((first_of[m], i), {}).get("output", "-"))
                        for m in methods]
                body.append("| " + " | ".join(_cell(c) for c in row) + " |")
            body.append("")
        # forgetting (the forgetting stage's records), shown after drift
        flines, fanswer = forgetting_lines(forgetting, t.name, methods, spec.seeds, alpha)
        # drift
        td = [r for r in drift if r["task"] == t.name]
        if td:
            body += ["## Representational drift (RQ1)", "",
                     f"Debiased linear CKA to the base model on {td[0]['n']} evaluation prompts, "
                     "mean over transformer layers (embedding output left out); the seed "
                     "control compares runs of one method with each other.", "",
                     "| pooling | method | CKA to base (mean over seeds) | seed control |",
                     "|---|---|---|---|"]
            for pooling in ("last", "mean"):
                for m in methods:
                    vals = [r["mean"] for r in td if r["pooling"] == pooling
                            and r["kind"] == "base_vs_run" and r["method"] == m]
                    ctl = [r["mean"] for r in td if r["pooling"] == pooling
                           and r["kind"] == "seed_control" and r["method"] == m]
                    e = _t_interval(vals, alpha)
                    body.append(f"| {pooling} | {m} | {_f(e[0], 4)} [{_f(e[1], 4)}, "
                                f"{_f(e[2], 4)}] | {_f(float(np.mean(ctl)) if ctl else None, 4)} |")
            if len(methods) >= 2:
                a, b = methods[-1], methods[0]
                per = {(r["method"], r["seed"]): r["mean"] for r in td
                       if r["pooling"] == "last" and r["kind"] == "base_vs_run"}
                diffs = [per[(a, s)] - per[(b, s)] for s in spec.seeds
                         if (a, s) in per and (b, s) in per
                         and per[(a, s)] is not None and per[(b, s)] is not None]
                d = _t_interval(diffs, alpha)
                word = ("inconclusive" if d[1] is None or d[1] <= 0 <= d[2] else
                        f"{a} drifts less" if d[0] > 0 else f"{a} drifts more")
                answers.append(
                    f"**RQ1 ({t.name}, generation).** {a} minus {b} on mean debiased CKA to the "
                    f"base (last prompt token, paired by seed, n = {len(diffs)}): "
                    f"{_f(d[0], 4)} [{_f(d[1], 4)}, {_f(d[2], 4)}] ({100 * (1 - alpha):g}% t "
                    f"interval): {word}. Quality: "
                    + "; ".join(f"{m} {main} {_f(means[m][main][0], 2)}" for m in methods)
                    + f"; {learned} of {len(truns)} runs learned."
                    + (f" {fanswer}" if fanswer else ""))
            body.append("")
        elif fanswer:
            answers.append(f"**RQ1 ({t.name}, generation).** {fanswer}")
        body += flines
        body += weight_lines(weight_recs, t.name, methods)
    # deployment
    if summary["modes"]:
        body += ["## Deployment cost of generation (RQ2)", "",
                 f"generate() with a KV cache, greedy, exactly {summary['new_tokens']} new tokens "
                 f"per row, {len(blocks)} blocks (fresh processes) x "
                 f"{spec.generation.bench_rounds} ABBA rounds; medians over every request. TTFT: "
                 "time to first token; TPOT: time per output token after the first.", "",
                 "| mode | batch | requests | TTFT ms | TPOT ms | latency ms | output tokens/s |",
                 "|---|---|---|---|---|---|---|"]
        for r in summary["modes"]:
            body.append(f"| {r['mode']} | {r['batch_size']} | {r['requests']} | "
                        f"{_f(r['ttft_ms'])} | {_f(r['tpot_ms'], 2)} | {_f(r['latency_ms'])} | "
                        f"{_f(r['tokens_per_s'])} |")
        body += ["", "### Paired comparisons (ratio A/B, unit: block)", "",
                 "A difference is called only when its interval clears the margin "
                 f"({100 * spec.stats.latency_margin:g}%) and the noise floor, the A/A "
                 "control's interval for the same metric and batch size (one model measured "
                 "under two labels): an interval that excludes 1 but stays within the floor is "
                 "inconclusive.", "",
                 "| comparison | metric | batch | ratio | interval | noise floor | outcome | "
                 "blocks |", "|---|---|---|---|---|---|---|---|"]
        for p in summary["pairs"]:
            floor = (f"±{_f(p['floor_pct'], 1)}%" if p.get("floor_pct") is not None
                     and p["comparison"] != "aa" else "-")
            body.append(f"| {p['comparison']} | {p['metric']} | {p['batch_size']} | "
                        f"{_f(p.get('ratio'), 3)} | [{_f(p.get('ci_low'), 3)}, "
                        f"{_f(p.get('ci_high'), 3)}] | {floor} | {p.get('outcome')} | "
                        f"{p['n_blocks']} |")
        um = {(p["metric"], p["batch_size"]): p for p in summary["pairs"]
              if p["comparison"] == "unmerged_vs_merged"}
        if um:
            parts = [f"{m.upper()} at batch {b}: {_f(p.get('ratio'), 3)} "
                     f"[{_f(p.get('ci_low'), 3)}, {_f(p.get('ci_high'), 3)}] ({p.get('outcome')})"
                     for (m, b), p in sorted(um.items()) if m in ("ttft", "tpot")]
            answers.append("**RQ2 (per token).** Unmerged / merged adapter: " + "; ".join(parts)
                           + f" (n = {len(blocks)} blocks, margin "
                           f"{100 * spec.stats.latency_margin:g}%, A/A control as noise floor).")
        body.append("")
    for g in gates:
        body.append(f"Correctness gate ({g['run_id']}): unmerged = merged = reloaded greedy "
                    f"outputs on {len(g['outputs']['unmerged'])} prompts: "
                    f"{'passed' if g['passed'] else 'FAILED'}.")
    body += ["", *(extra or [])]
    body += ["", "## Provenance", ""]
    for r in ctx.store.records("data"):
        body.append(f"- {r['task']}/{r['split']}: {r['source']}, {r.get('path')}, "
                    f"sha256 {r['checksum'][:16]}..., {r['rows_used']} of {r['rows']} rows used")
    text = "\n".join([*lines, "## Answers", "", *(a + "\n" for a in answers), *body]) + "\n"
    atomic_write_text(ctx.store.path("report.md"), text)
    try:
        import markdown  # type: ignore[import-not-found]

        html = markdown.markdown(text, extensions=["tables"])
    except ImportError:
        import html as h

        html = f"<pre>{h.escape(text)}</pre>"
    atomic_write_text(ctx.store.path("report.html"),
                      f"<!doctype html><meta charset='utf-8'><title>{spec.name}</title>{html}")
    ctx.console.print(f"report: {ctx.store.path('report.md')}")


if __name__ == "__main__":
    block_main(sys.argv[1])
