"""Run the multi-tenant serving scenarios of a study on a real engine (vLLM), outside the pipeline.

    peftlab serve e2e-smollm2-vllm                                       # the pipeline's stage
    python -m peftlab.bench.engines runs/smollm2-glue --synthetic 8      # no trained adapters
    python -m peftlab.bench.engines smollm2-glue --synthetic 8 --out runs/engine-smollm2 \
        --data-dir ../shared/data/glue --quick

The study's own adapters are served by the serve stage (`peftlab serve SPEC`, part of `peftlab
run` when the spec has an `engine:` block). This runner serves K random adapters of the spec's
first LoRA method's rank and targets on the base (serving cost depends on rank and targets,
not on what the adapter learned) and, for the mixed configuration, a dense model of the base's
size in place of a fully fine-tuned one. SPEC_OR_STUDY: a study directory (its spec.yaml) or a
spec (file or shipped name, then --out is where the records go). Prompts: the evaluation texts
of the spec's first task. Writes the `engine_serving` table into the study directory's store;
`peftlab report` shows it as "Serving on vLLM". Settings: the spec's `engine:` block when it has
one, else its defaults (`--quick`: the short sweep).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from peftlab.errors import PeftlabError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peftlab.bench.engines", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec_or_study")
    ap.add_argument("--out", help="study directory for the records (default: the study's)")
    ap.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA_DIR"))
    ap.add_argument("--synthetic", type=int, required=True, metavar="K",
                    help="serve K random adapters (the study's own: peftlab serve SPEC)")
    ap.add_argument("--quick", action="store_true",
                    help="short sweeps: rates 1-8 req/s, 40 requests per run")
    ap.add_argument("--configs", help="comma-separated subset: base,adapters,merged,mixed")
    args = ap.parse_args(argv)
    try:
        run(args)
    except PeftlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace) -> None:
    from peftlab.bench.engines import make_engine
    from peftlab.bench.engines.base import EngineSettings
    from peftlab.bench.engines.folders import merged_folder, synthetic_adapters
    from peftlab.bench.engines.inputs import base_model_folder, study_prompts
    from peftlab.bench.engines.load import EnginePrompts
    from peftlab.bench.engines.scenarios import ScenarioSettings, plan_scenarios, run_scenarios
    from peftlab.context import Context
    from peftlab.engine_spec import EngineSpec
    from peftlab.pipeline import load_study
    from peftlab.records import replace
    from peftlab.store import Store

    given = Path(args.spec_or_study)
    is_study = given.is_dir() and (given / "spec.yaml").is_file()
    out = Path(args.out) if args.out else (given if is_study else None)
    if out is None:
        raise PeftlabError("--out: a spec needs a directory for the records")
    study = load_study(given / "spec.yaml" if is_study else args.spec_or_study,
                       data_dir=args.data_dir, output_dir=str(out))
    ctx = Context(study=study, store=Store(out))
    es = study.spec.engine or EngineSpec(max_tokens=16)
    es = es.model_copy(update={"adapters_k": args.synthetic, "fewer_adapters": [
        n for n in es.fewer_adapters if n < args.synthetic]})
    if args.quick:
        es = es.quick()
    base = base_model_folder(ctx)
    work = out / "engine"
    lora = next((x for x in study.spec.methods.values() if x.get("type") == "lora"), {})
    rank = int(lora.get("r") or 8)
    targets = lora.get("target_modules")
    adapters = synthetic_adapters(base, work / "adapters", k=args.synthetic, r=rank,
                                  targets=targets if isinstance(targets, list) else None)
    full = None
    if "mixed" in es.configs and len(adapters) >= 2:
        # the fully fine-tuned model's stand-in: a dense model of the base's size (the last
        # adapter merged); what it costs to serve does not depend on its weights' values
        last = list(adapters)[-1]
        full = ("full-synthetic", merged_folder(base, adapters[last],
                                                work / "full" / "full-synthetic"))
    m = min(args.synthetic, es.merged_servers if isinstance(es.merged_servers, int) else 3)
    names = list(adapters)
    merged = {a: merged_folder(base, adapters[a], work / "merged" / a) for a in names[:m]} \
        if "merged" in es.configs else {}
    scenarios = plan_scenarios(base, adapters, merged, full=full, ks=es.counts(),
                               max_servers=m, max_lora_rank=max(rank, 8),
                               configs=args.configs.split(",") if args.configs else es.configs)
    task = study.spec.tasks[0].name
    texts, lengths = study_prompts(ctx, es, [task])[task]

    def prompts_for(request_names: list[str]) -> EnginePrompts:
        return EnginePrompts(request_names, {n: texts for n in request_names},
                             max_tokens=es.max_tokens if isinstance(es.max_tokens, int) else 16,
                             lengths={n: lengths for n in request_names} if lengths else None)

    engine = make_engine(es.name, EngineSettings(
        python=es.python, dtype=study.spec.model.dtype, max_model_len=es.max_model_len,
        max_num_seqs=es.max_num_seqs, startup_timeout_s=es.startup_timeout_s),
        kv_cache_gib=es.kv_cache_gib, gpu_memory_fraction=es.gpu_memory_fraction)
    settings = ScenarioSettings(
        rates=es.rates, patterns=list(es.popularity), zipf_exponent=es.zipf_exponent,
        max_requests=es.max_requests, max_seconds=es.max_seconds,
        drain_seconds=es.drain_seconds, min_requests=es.min_requests,
        slo_ttft_ms=es.slo_ttft_ms, slo_tpot_ms=es.slo_tpot_ms)
    print(f"serving on {es.name}: {', '.join(s.config for s in scenarios)} "
          f"({len(adapters)} adapters, {len(texts)} prompts)", flush=True)
    records = run_scenarios(engine, scenarios, prompts_for, settings, log_dir=work / "logs",
                            on_row=lambda line: print(line, flush=True))
    for sc in scenarios:  # a run of some configurations keeps the others' records
        replace(ctx.store, f"{es.name}/{sc.config}/",
                [r for r in records if r.config == sc.config], "engine_serving")
    print(f"engine_serving: {len(records)} load runs written to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
