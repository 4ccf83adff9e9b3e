"""How far each run moved from the base model: per-layer similarity and weight-space updates.

    peftlab drift quickstart

Representations (from `peftlab represent`), per task, for every layer:
- `base_vs_run`: every configured measure between the base model and each finished run;
- `seed_to_seed`: the same measures between two runs of the same task and method that differ only
  in their seed (every pair): the negative control, i.e. how much two equally good runs disagree.
Each CKA measure (linear, debiased linear, RBF) carries its permutation null floor at the same n
and d (`similarity.cka_null`: CKA after shuffling the pairing of examples): null mean, 95% quantile
and permutation p-value. One record per (task, method, kind, run pair, layer) goes to the `drift`
table, keyed "<kind>/<run_a>/<run_b>/L<layer:03d>" (run_a is "base" for base_vs_run).

A measure that is undefined for a layer (`DegenerateInputError`, e.g. CKA 0/0 when every example
has the same pooled vector) is stored as value None with its reason under `undefined`;
the stats stage's layer bands (`stages.stats.band_value`) leave such layers out, so a summary
never turns into NaN.

Weights, per run and adapted weight matrix, to the `weights` table keyed "<run_id>/<module>":
`weights.update_stats(base, tuned)` of the update tuned - base. For PEFT runs the tuned matrix is
the merged one (adapter loaded on the base, upcast to float32, `merge_and_unload`), so every PEFT
method (LoRA, DoRA, IA3, AdaLoRA) is measured the same way; the adapted matrices are the modules
PEFT wrapped. For full fine-tuning every linear layer of the backbone is adapted. Left out: the
classification head (freshly initialised for the task, so its "update" from a random start says
nothing about drift from the pretrained model), embeddings, norms and biases.

Both parts are idempotent: a comparison or run whose inputs (representation files, settings, run)
are unchanged is skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError
from peftlab.measures import compare_layer, knn_k
from peftlab.records import DriftRecord, WeightRecord, replace
from peftlab.representations import BASE_KEY, layer_names, load_representations
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.spec import RunConfig
    from peftlab.study import Context

KINDS = ("base_vs_run", "seed_to_seed")


def check_finite(arr: np.ndarray, where: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise PeftlabError(f"{where}: {bad} NaN or infinite values in the stored representations "
                           f"(shape {arr.shape}); rerun `peftlab represent`")


# ----------------------------------------------------------------------------- the stage


def run(ctx: Context) -> None:
    """Fill the `drift` table (representations) and the `weights` table (weight updates)."""
    representation_drift(ctx)
    weight_drift(ctx)


def _finished(ctx: Context) -> list[RunConfig]:
    return ctx.finished_runs()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def comparisons(runs: list[RunConfig]) -> list[tuple[str, str, RunConfig | None, RunConfig]]:
    """(kind, method, run_a or None for the base, run_b) for one task's finished runs.

    Base vs every run; then every pair of runs of the same method (seed_to_seed), lower seed
    first.
    """
    out: list[tuple[str, str, RunConfig | None, RunConfig]] = [
        ("base_vs_run", rc.method, None, rc) for rc in runs]
    by_method: dict[str, list[RunConfig]] = defaultdict(list)
    for rc in runs:
        by_method[rc.method].append(rc)
    for method, group in by_method.items():
        group = sorted(group, key=lambda r: r.seed)
        out += [("seed_to_seed", method, a, b) for a, b in itertools.combinations(group, 2)]
    return out


def _record_key(kind: str, a: str, b: str, layer: int | None = None) -> str:
    prefix = f"{kind}/{a}/{b}/"
    return prefix if layer is None else f"{prefix}L{layer:03d}"


def representation_drift(ctx: Context) -> None:
    """Per-layer measures, null floors and seed-to-seed controls for every task."""
    cfg = ctx.study.spec.drift
    settings = cfg.model_dump(mode="json")
    settings.pop("weight_modules")
    settings.pop("intruder_top_k")
    settings.pop("intruder_epsilon")
    from peftlab.logs import track

    runs = _finished(ctx)
    for tspec in ctx.study.spec.tasks:
        task = tspec.name
        task_runs = [rc for rc in runs if rc.task == task]
        if not task_runs:
            ctx.console.print(f"drift {task}: no finished runs")
            continue
        cache: dict[str, tuple[dict[int, np.ndarray], dict[str, Any]]] = {}

        def reps(key: str, task: str = task, cache: dict = cache):
            if key not in cache:
                cache[key] = load_representations(ctx.store, task, key)
            return cache[key]

        done = skipped = 0
        for kind, method, rc_a, rc_b in track(
                ctx.console, f"drift {task}", comparisons(task_runs),
                label=lambda c: f"{c[0]} {'base' if c[2] is None else c[2].run_id}/{c[3].run_id}"):
            key_a = BASE_KEY if rc_a is None else rc_a.run_id
            (_, man_a), (_, man_b) = reps(key_a), reps(rc_b.run_id)
            stamp = {"a": man_a["content_sha256"], "b": man_b["content_sha256"],
                     "probe_a": man_a["probe_hash"], "probe_b": man_b["probe_hash"],
                     "settings": _digest(settings)}
            prefix = _record_key(kind, key_a, rc_b.run_id)
            first = ctx.store.get("drift", prefix + "L000")
            if first is not None and first.get("stamp") == stamp:
                skipped += 1
                continue
            items = _compare_runs(ctx, task, kind, method, key_a, rc_a, rc_b, reps, stamp,
                                  settings)
            replace(ctx.store, prefix, items, DriftRecord.TABLE)
            done += 1
        ctx.console.print(f"drift {task}: {done} comparisons computed, {skipped} up to date")


def _compare_runs(ctx: Context, task: str, kind: str, method: str, key_a: str,
                  rc_a: RunConfig | None, rc_b: RunConfig, reps: Any, stamp: dict[str, Any],
                  settings: dict[str, Any]) -> list[DriftRecord]:
    """Drift records, one per layer, for one pair of models of a task."""
    cfg = ctx.study.spec.drift
    (layers_a, man_a), (layers_b, man_b) = reps(key_a), reps(rc_b.run_id)
    who_a = "the base model" if rc_a is None else f"run {rc_a.run_id}"
    pair = f"drift {task}: {kind} {key_a} vs run {rc_b.run_id}"
    names = layer_names(max(len(layers_a), len(layers_b)))
    if len(layers_a) != len(layers_b):
        raise PeftlabError(f"{pair}: {who_a} has {len(layers_a)} layers, run {rc_b.run_id} has "
                           f"{len(layers_b)}; both must come from the same architecture")
    prov = provenance()
    items = []
    for layer in sorted(layers_a):
        x, y = layers_a[layer], layers_b[layer]
        where = f"run {rc_b.run_id}, layer {layer} ({names[layer]})"
        if man_a["probe_hash"] != man_b["probe_hash"] or x.shape[0] != y.shape[0]:
            raise PeftlabError(
                f"drift {task}: {where}: its representations were extracted on another probe set "
                f"than those of {who_a} (probe hash {man_b['probe_hash'][:12]} vs "
                f"{man_a['probe_hash'][:12]}, n {y.shape[0]} vs {x.shape[0]}), so the rows do "
                "not pair up; rerun `peftlab represent` to extract both on the same examples")
        check_finite(x, f"drift {task}: {who_a}, layer {layer} ({names[layer]})")
        check_finite(y, f"drift {task}: {where}")
        result = compare_layer(x, y, cfg, f"{pair}, layer {layer} ({names[layer]})")
        items.append(DriftRecord(
            task=task,
            method=method,
            method_type=rc_b.method_type,
            kind=kind,
            run_a=key_a,
            run_b=rc_b.run_id,
            seed_a=None if rc_a is None else rc_a.seed,
            seed_b=rc_b.seed,
            layer=layer,
            layer_name=names[layer],
            n_layers=len(layers_a),
            n=int(x.shape[0]),
            d_a=int(x.shape[1]),
            d_b=int(y.shape[1]),
            pooling=man_b["pooling"],
            probe_hash=man_b["probe_hash"],
            **result,
            knn_k=knn_k(cfg, int(x.shape[0])) if "knn" in cfg.measures else None,
            settings=settings,
            stamp=stamp,
            provenance=prov,
        ))
    return items


# ----------------------------------------------------------------------------- weights


_BLOCK = re.compile(r"\.(\d+)\.")


def block_index(module_name: str) -> int | None:
    """0-based transformer block of a module ("model.layers.3.self_attn.q_proj" -> 3), or None.

    Its hidden-state layer in the `drift` table is block + 1 (layer 0 is the embeddings).
    """
    found = _BLOCK.search(f".{module_name}.")
    return int(found.group(1)) if found else None


def backbone_linear_weights(model: Any) -> dict[str, Any]:
    """{module name: weight (out_features, in_features)} of the linear layers outside the head.

    GPT-2 style `Conv1D` stores (in, out): it is transposed here so every matrix reads the same.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from peftlab.models import head_module_names

    heads = tuple(head_module_names(model))
    out = {}
    for name, module in model.named_modules():
        if name.split(".")[0] in heads:
            continue
        if isinstance(module, nn.Linear):
            out[name] = module.weight
        elif isinstance(module, Conv1D):
            out[name] = module.weight.T
    return out


def adapted_weights(model: Any, method_is_peft: bool) -> dict[str, Any]:
    """{module name: tuned weight (out, in), float32, CPU} of every adapted matrix of a run.

    PEFT: the modules PEFT wrapped, after merging the adapter into the (float32) base;
    full fine-tuning: every linear layer of the backbone. Module names are those of the plain
    transformers model (no PEFT prefix), so they match `backbone_linear_weights(base)`.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from peftlab.models import head_module_names

    model = model.to("cpu").float()  # merge in float32: a bf16 merge would bury small updates
    if not method_is_peft:
        return backbone_linear_weights(model)
    inner = model.get_base_model()
    heads = tuple(head_module_names(inner))
    wrapped = [name for name, module in inner.named_modules()
               if isinstance(module, BaseTunerLayer) and name.split(".")[0] not in heads]
    merged = model.merge_and_unload()
    linear = backbone_linear_weights(merged)
    missing = [n for n in wrapped if n not in linear]
    if missing:
        raise PeftlabError(f"adapted modules {missing[:3]} are not linear layers after merging; "
                           "weight-space analysis covers linear layers only")
    return {name: linear[name] for name in wrapped}


def weight_drift(ctx: Context) -> None:
    """update_stats of every adapted matrix of every finished run, to the `weights` table."""
    from peftlab.artifacts import ModelLoader, load_run
    from peftlab.methods import get_method
    from peftlab.weights import base_left_singular_vectors, update_stats

    cfg = ctx.study.spec.drift
    settings = {"top_k": cfg.intruder_top_k, "epsilon": cfg.intruder_epsilon,
                "weight_modules": cfg.weight_modules}
    have: dict[str, str] = {}
    for key in ctx.store.keys("weights"):
        have.setdefault(key.split("/", 1)[0], key)
    for tspec in ctx.study.spec.tasks:
        task = tspec.name
        todo = []
        for rc in [r for r in _finished(ctx) if r.task == task]:
            run = ctx.store.get("runs", rc.run_id) or {}
            stamp = {"run": f"{run.get('artifact')}@{run.get('finished')}",
                     "settings": _digest(settings)}
            first = ctx.store.get("weights", have[rc.run_id]) if rc.run_id in have else None
            if first is None or first.get("stamp") != stamp:
                todo.append((rc, stamp))
        if not todo:
            continue
        rc0 = todo[0][0]
        task_def = ctx.data.task(task)
        # The full-precision base (no method's loading hook: a 4-bit base is not the reference).
        base = ModelLoader(rc0.model, "cpu").base(
            1 if task_def.is_regression else len(task_def.label_names),
            None if task_def.is_regression else list(task_def.label_names))
        base_weights = {n: w.detach().float().cpu()
                        for n, w in backbone_linear_weights(base).items()}
        del base
        base_u: dict[str, Any] = {}  # the base's SVD, shared by every run of the task
        prov = provenance()
        for rc, stamp in todo:
            method = get_method(rc.method_type)
            _, tuned = load_run(ctx, rc.run_id, device="cpu")
            tuned_weights = adapted_weights(tuned, method.is_peft)
            del tuned
            items = []
            for name, weight in sorted(tuned_weights.items()):
                leaf = name.split(".")[-1]
                if cfg.weight_modules is not None and leaf not in cfg.weight_modules:
                    continue
                if name not in base_weights:
                    raise PeftlabError(f"weights {task}: run {rc.run_id}: module {name} has no "
                                       "counterpart in the base model")
                stats, undefined = None, None
                try:
                    if name not in base_u:
                        base_u[name] = base_left_singular_vectors(base_weights[name])
                    stats = update_stats(base_weights[name], weight.detach(),
                                         top_k=cfg.intruder_top_k, epsilon=cfg.intruder_epsilon,
                                         base_u=base_u[name]).as_dict()
                except DegenerateInputError as err:
                    undefined = err.reason
                except PeftlabError as err:
                    raise PeftlabError(f"weights {task}: run {rc.run_id}, block "
                                       f"{block_index(name)}, module {name}: {err}") from None
                items.append(WeightRecord(
                    task=task, run_id=rc.run_id, method=rc.method, method_type=rc.method_type,
                    seed=rc.seed, is_peft=method.is_peft, module=name, matrix=leaf,
                    block=block_index(name), shape=list(weight.shape),
                    update="merged - base" if method.is_peft else "tuned - base",
                    stats=stats, undefined=undefined, settings=settings, stamp=stamp,
                    provenance=prov))
            replace(ctx.store, f"{rc.run_id}/", items, WeightRecord.TABLE)
            ctx.console.print(f"weights {task}: run {rc.run_id}: {len(items)} matrices")

