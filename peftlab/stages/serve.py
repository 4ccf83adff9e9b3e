"""The serve stage: the study's own models on a real engine (vLLM) under open-loop load.

    peftlab run e2e-smollm2-vllm      # after bench, before stats and report
    peftlab serve e2e-smollm2-vllm    # this stage alone

Runs only when the spec has an `engine:` block (`peftlab.engine_spec`); without one it says so
in a line and does nothing. It serves the base model (a Hugging Face folder), the finished
runs of the study's first LoRA method as adapters (k names; copies of them under distinct names
where the study has fewer runs: `bench.engines.inputs`), their merged models and the first
fully fine-tuned run, in the configurations of `bench.engines.scenarios` (base alone; 1,
fewer_adapters and k adapters on one server; merged models, one server each, as many as fit;
k-1 adapters beside the full model), each under open-loop load at rising rates with uniform and
skewed popularity. Records: the `engine_serving` table; the report's "Serving on vLLM".

Before any stage of `peftlab run` does work (`preflight`), the engine environment must exist:
a missing one is one `error:` line naming scripts/build-engine-env.sh, `engine.python` and
$PEFTLAB_ENGINE_PYTHON (exit 2). Resumable: a sweep (configuration x popularity) whose records
carry the current stamp is not run again; the records of a sweep are written when it ends, so
a killed stage loses only the sweep it was in, and leaves no server behind (the watchdog of
`bench.engines.base`).

With `merged_servers: fit`, the number of merged-model servers is measured: the base model's
server (the same size as a merged model's) reports its memory after its sweep, and as many such
servers as the free memory then holds (a fifth of it, at least 2 GiB, kept back) are started,
at most k, side by side; the count and why are in the table's note, and in the table
engine_serving_plan, so a resumed stage keeps the count the session it resumes chose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.plan import Study


def unconfigured(study: Study) -> str | None:
    """Why the spec asks for no serving (no `engine:` block), else None."""
    if study.spec.engine is None:
        return f"{study.where('engine')}: the spec has no engine block (serving on an engine)"
    return None


def preflight(study: Study) -> None:
    """Checks that take seconds, run before any stage of `peftlab run`: the engine environment
    exists; the output lengths asked for are defined for the study's tasks."""
    from peftlab.bench.engines.base import engine_python
    from peftlab.bench.engines.inputs import check_output_lengths

    es = study.spec.engine
    if es is None:
        return
    engine_python(es.python, spec_key="engine.python")
    check_output_lengths(study, es)


def run(ctx: Context) -> None:
    from peftlab.bench.engines import make_engine
    from peftlab.bench.engines.base import EngineSettings
    from peftlab.bench.engines.inputs import merged_models, study_models, study_prompts
    from peftlab.bench.engines.load import EnginePrompts
    from peftlab.bench.engines.scenarios import (
        EngineServingRecord,
        Scenario,
        ScenarioSettings,
        available_memory_gib,
        patterns_of,
        plan_scenarios,
        run_scenario,
        scenario_stamp,
        servers_that_fit,
    )
    from peftlab.records import read, replace

    es = ctx.study.spec.engine
    if es is None:
        ctx.console.print("serve: skipped (the spec has no engine block: no serving on an "
                          "engine asked for)")
        return
    preflight(ctx.study)
    work = ctx.store.root / "engine"
    models = study_models(ctx, es, work=work)
    k = es.adapters_k
    first_task = models.tasks[next(iter(models.adapters))]
    per_task = study_prompts(ctx, es, sorted(set(models.tasks.values())))
    engine = make_engine(es.name, EngineSettings(
        python=es.python, dtype=ctx.study.spec.model.dtype, max_model_len=es.max_model_len,
        max_num_seqs=es.max_num_seqs, startup_timeout_s=es.startup_timeout_s),
        kv_cache_gib=es.kv_cache_gib, gpu_memory_fraction=es.gpu_memory_fraction)
    version = engine.version()
    settings = ScenarioSettings(
        rates=es.rates, patterns=list(es.popularity), zipf_exponent=es.zipf_exponent,
        max_requests=es.max_requests, max_seconds=es.max_seconds,
        drain_seconds=es.drain_seconds, min_requests=es.min_requests,
        slo_ttft_ms=es.slo_ttft_ms, slo_tpot_ms=es.slo_tpot_ms)
    fixed = es.max_tokens if isinstance(es.max_tokens, int) else 16

    def prompts_for(names: list[str]) -> EnginePrompts:
        tasks = {n: models.tasks.get(n, first_task) for n in names}  # "base": the first task's
        lengths = {n: per_task[t][1] for n, t in tasks.items() if per_task[t][1] is not None}
        return EnginePrompts(names, {n: per_task[t][0] for n, t in tasks.items()},
                             max_tokens=fixed, lengths=lengths or None)

    def stored(sc: Scenario, pattern: str) -> list[EngineServingRecord]:
        return [r for r in read(ctx.store, EngineServingRecord)
                if r.engine == es.name and r.config == sc.config and r.pattern == pattern]

    def serve(sc: Scenario) -> None:
        prompts = prompts_for(sc.names)
        stamp = scenario_stamp(engine, version, sc, settings, prompts)

        def skip(pattern: str) -> bool:
            old = stored(sc, pattern)
            if old and all(r.stamp == stamp for r in old):
                ctx.console.print(f"serve: {sc.config} {pattern}: done earlier ({len(old)} load "
                                  "runs stored)")
                return True
            return False

        def keep(records: list[EngineServingRecord]) -> None:
            # one sweep's records replace whatever an earlier (other) sweep stored
            replace(ctx.store, f"{es.name}/{sc.config}/{records[0].pattern}/", records,
                    EngineServingRecord.TABLE)
            r = records[-1]
            sat = (f"saturation {r.saturation_rate:g} req/s" if r.saturation_rate is not None
                   else "no rate sustained")
            ctx.console.print(f"serve: {sc.config} {r.pattern}: {sat}, {len(records)} load "
                              "runs stored")

        run_scenario(engine, sc, prompts, settings, log_dir=work / "logs", version=version,
                     skip=skip, on_sweep=keep, on_row=lambda line: ctx.console.print(line))

    def plan(m: int, why: str = "") -> list[Scenario]:
        return plan_scenarios(models.base, models.adapters, merged_models(models, m, work=work)
                              if "merged" in es.configs else {}, full=models.full,
                              ks=es.counts(), max_servers=m, max_lora_rank=models.rank,
                              configs=list(es.configs), sources=models.sources,
                              fewer_servers_why=why)

    copies = (f"; {models.copies} of them copies of the {len(models.runs)} trained adapters "
              "under distinct names" if models.copies else "")
    ctx.console.print(f"serve: {engine.label} {version or ''}: {k} adapters{copies}; full model "
                      f"{models.full[0] if models.full else 'none'}; "
                      f"{sum(len(p) for p, _ in per_task.values())} prompts")
    if "mixed" in es.configs and models.full is None:
        ctx.console.print("serve: mixed skipped: the study has no finished full fine-tuning run")
    # the base model first: with merged_servers "fit" its server's memory sizes the merged ones
    for sc in plan_scenarios(models.base, models.adapters, {}, ks=es.counts(), max_servers=1,
                             configs=["base"]):
        if "base" in es.configs:
            serve(sc)
    m, why = _merged_servers(ctx, es, available_memory_gib, servers_that_fit)
    planned = plan(m, why)
    for sc in planned:
        if sc.config != "base":
            serve(sc)
    # records of configurations this plan no longer has (another k, merged count, config list)
    # would sit beside the new ones in the report: dropped once every planned sweep is stored
    keep = {(sc.config, p) for sc in planned for p in patterns_of(sc, settings)}
    stale = [r for r in read(ctx.store, EngineServingRecord)
             if r.engine == es.name and (r.config, r.pattern) not in keep]
    for r in stale:
        ctx.store.delete(EngineServingRecord.TABLE, r.key)
    n = len(read(ctx.store, EngineServingRecord))
    ctx.console.print(f"serve: {n} load runs in the engine_serving table"
                      + (f" ({len(stale)} of configurations no longer planned dropped)"
                         if stale else ""))


PLAN_TABLE = "engine_serving_plan"  # the merged-server count a "fit" measurement chose


def _merged_servers(ctx: Context, es, available, fit) -> tuple[int, str]:
    """How many merged-model servers (m <= k) and, when fewer than k, why. A "fit" count is
    stored (table engine_serving_plan) with the server size it rests on, and kept while the
    base model's stored sweep reports that size: a resumed stage plans the same m (and the same
    like-for-like adapters-m) as the session it resumes."""
    from peftlab.bench.engines.scenarios import EngineServingRecord
    from peftlab.records import read

    k = es.adapters_k
    if isinstance(es.merged_servers, int):
        return min(k, es.merged_servers), f"engine.merged_servers {es.merged_servers}"
    base = [x for r in read(ctx.store, EngineServingRecord)
            if r.engine == es.name and r.config == "base" for x in r.memory_gib if x]
    if not base:
        return 1, "the memory of a server was not measured: one server"
    key = f"{es.name}/merged_servers"
    kept = ctx.store.get(PLAN_TABLE, key)
    if kept and kept.get("server_gib") == max(base) and kept.get("k") == k:
        return int(kept["m"]), str(kept["why"])
    free = available()
    if free is None:
        return 1, "the free memory is unknown: one server"
    n = fit(max(base), free)
    m, why = min(k, n), (f"{n} fit in memory: {max(base):.1f} GiB per server, measured on the "
                         f"base model's, {free:.1f} GiB free")
    ctx.store.put(PLAN_TABLE, key, {"m": m, "why": why, "k": k, "server_gib": max(base),
                                    "free_gib": free})
    return m, why
