"""Run the multi-tenant serving scenarios of a study on a real engine (vLLM).

    python -m peftlab.bench.engines runs/smollm2-glue                    # the study's adapters
    python -m peftlab.bench.engines smollm2-glue --synthetic 8 --out runs/engine-smollm2 \
        --data-dir ../shared/data/glue --quick                           # no trained adapters

SPEC_OR_STUDY: a study directory (its spec.yaml, its finished LoRA and full runs) or a spec
(file or shipped name, then --out is where the records go). Adapters: the study's finished LoRA
runs in run-id order (popularity order: the first is the most popular under skew), or with
--synthetic K, K random adapters of the spec's first LoRA method's rank and targets on the base
(serving cost depends on rank and targets, not on what the adapter learned), and for the mixed
configuration a dense model of the base's size in place of a fully fine-tuned one. Prompts: the
evaluation texts of the adapters' tasks (the spec's pair template for pairs). Writes the
`engine_serving` table into the study directory's store; `peftlab report` shows it as "Serving on
vLLM". Settings: the spec's `bench.serving.engine` block when it has one, else its defaults
(`--quick`: the short sweep this README quotes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError


def _prompts(ctx: Any, tasks: list[str], *, limit: int) -> list[str]:
    spec = ctx.study.spec
    out: list[str] = []
    for task in tasks:
        df = ctx.data.split(task, "eval")
        for _, r in df.head(limit).iterrows():
            b = r.get("text_b")
            out.append(spec.model.pair_template.format(a=r["text_a"], b=b)
                       if isinstance(b, str) and b else str(r["text_a"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peftlab.bench.engines", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec_or_study")
    ap.add_argument("--out", help="study directory for the records (default: the study's)")
    ap.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA_DIR"))
    ap.add_argument("--synthetic", type=int, default=0, metavar="K",
                    help="serve K random adapters instead of the study's")
    ap.add_argument("--quick", action="store_true",
                    help="short sweeps: rates 0.5-2 req/s, 40 requests per run")
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
    from peftlab.bench.engines.folders import (
        base_folder,
        full_folder,
        merged_folder,
        served_adapter,
        synthetic_adapters,
    )
    from peftlab.bench.engines.load import EnginePrompts
    from peftlab.bench.engines.scenarios import ScenarioSettings, plan_scenarios, run_scenarios
    from peftlab.context import Context
    from peftlab.models import resolve_model
    from peftlab.pipeline import load_study
    from peftlab.records import replace
    from peftlab.spec import EngineSpec
    from peftlab.store import Store

    given = Path(args.spec_or_study)
    is_study = given.is_dir() and (given / "spec.yaml").is_file()
    out = Path(args.out) if args.out else (given if is_study else None)
    if out is None:
        raise PeftlabError("--out: a spec needs a directory for the records")
    study = load_study(given / "spec.yaml" if is_study else args.spec_or_study,
                       data_dir=args.data_dir, output_dir=str(out))
    ctx = Context(study=study, store=Store(out))
    serving = study.spec.bench.serving
    es: EngineSpec = (getattr(serving, "engine", None) if serving is not None else None) \
        or EngineSpec()
    if args.quick:
        es = es.quick()
    m = study.spec.model
    base = base_folder(resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision))
    work = out / "engine"
    adapters: dict[str, Path] = {}
    tasks: list[str] = []
    full = None
    rank = 8
    if args.synthetic:
        lora = next((x for x in study.spec.methods.values() if x.get("type") == "lora"), {})
        rank = int(lora.get("r") or 8)
        targets = lora.get("target_modules")
        targets = targets if isinstance(targets, list) else None
        adapters = synthetic_adapters(base, work / "adapters", k=args.synthetic, r=rank,
                                      targets=targets)
        tasks = [t.name for t in study.spec.tasks][:1]
        if "mixed" in es.configs and len(adapters) >= 2:
            # the fully fine-tuned model's stand-in: a dense model of the base's size (the last
            # adapter merged); what it costs to serve does not depend on its weights' values
            last = list(adapters)[-1]
            full = ("full-synthetic", merged_folder(base, adapters[last],
                                                    work / "full" / "full-synthetic"))
    else:
        for rc in study.runs:
            rec = ctx.store.get("runs", rc.run_id)
            if not rec or rec.get("status") != "done" or not rec.get("artifact"):
                continue
            path = ctx.store.root / rec["artifact"]
            if rc.method_type == "lora" and len(adapters) < es.k:
                adapters[rc.run_id] = served_adapter(path, work / "adapters" / rc.run_id)
                rank = max(rank, int((rc.params or {}).get("r", 8)))
                tasks.append(rc.task)
            elif rc.method_type == "full" and full is None and "mixed" in es.configs:
                full = (rc.run_id, full_folder(path, work / "full" / rc.run_id, base=base))
        if not adapters:
            raise PeftlabError(f"{given}: no finished LoRA runs to serve (run the study first, "
                               "or pass --synthetic K)")
    ks = sorted({n for n in (1, 3, es.k) if n <= len(adapters)})
    names = list(adapters)
    merged = {}
    if "merged" in es.configs:
        for a in names[:min(es.k, es.max_servers, len(names))]:
            merged[a] = merged_folder(base, adapters[a], work / "merged" / a)
    scenarios = plan_scenarios(base, adapters, merged, full=full, ks=ks,
                               max_servers=es.max_servers, max_lora_rank=max(rank, 8),
                               configs=args.configs.split(",") if args.configs else es.configs)
    texts = _prompts(ctx, sorted(set(tasks)), limit=es.prompts_per_task)

    def prompts_for(request_names: list[str]) -> EnginePrompts:
        return EnginePrompts(request_names, {n: texts for n in request_names},
                             max_tokens=es.max_tokens)

    engine = make_engine(es.name, EngineSettings(
        python=es.python, dtype=study.spec.model.dtype, max_model_len=es.max_model_len,
        max_num_seqs=es.max_num_seqs, startup_timeout_s=es.startup_timeout_s),
        kv_cache_gib=es.kv_cache_gib)
    settings = ScenarioSettings(
        rates=es.rates, patterns=es.patterns, zipf_exponent=es.zipf_exponent,
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
