"""How far each run moved from the base model: per-layer similarity and weight-space updates.

    peftlab drift studies/quickstart.yaml

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
`layer_means` leaves such layers out, so a summary never turns into NaN.

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
import math
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError
from peftlab.represent import BASE_KEY, layer_names, load_representations
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.spec import DriftSpec, RunConfig
    from peftlab.study import Context

CKA_MEASURES = ("linear_cka", "linear_cka_debiased", "rbf_cka")
KINDS = ("base_vs_run", "seed_to_seed")


# ----------------------------------------------------------------------------- one layer


def measure(name: str, x: np.ndarray, y: np.ndarray, cfg: DriftSpec) -> float:
    """One similarity measure of x (n, dx) and y (n, dy), unitless (see `peftlab.similarity`).

    Raises DegenerateInputError when it is undefined for these values, PeftlabError for
    inputs that cannot be compared.
    """
    from peftlab import similarity as sim

    if name == "linear_cka":
        return sim.linear_cka(x, y)
    if name == "linear_cka_debiased":
        return sim.linear_cka(x, y, debiased=True)
    if name == "rbf_cka":
        return sim.rbf_cka(x, y, sigma=cfg.rbf_sigma)
    if name == "cosine":
        return sim.cosine_similarity(x, y).mean
    if name == "procrustes":
        return sim.procrustes_distance(x, y)
    if name == "knn":
        return sim.knn_overlap(x, y, k=knn_k(cfg, x.shape[0]))
    raise PeftlabError(f"unknown drift measure {name!r}")


def knn_k(cfg: DriftSpec, n: int) -> int:
    """drift.knn_k capped at n - 1 (an example has n - 1 possible neighbours)."""
    return max(1, min(cfg.knn_k, n - 1))


def null_floor(name: str, x: np.ndarray, y: np.ndarray, cfg: DriftSpec) -> dict[str, Any]:
    """Permutation null of a CKA measure at this n and d (drift.null_permutations shuffles).

    {observed, null_mean, null_std, null_q95, p_value, n_permutations}; p_value is the share
    of shuffled pairings (plus one) whose CKA reaches the observed value.
    """
    from peftlab.similarity import cka_null

    res = cka_null(x, y, cfg.null_permutations, cfg.seed,
                   debiased=name == "linear_cka_debiased",
                   kernel="rbf" if name == "rbf_cka" else "linear", sigma=cfg.rbf_sigma)
    return {"observed": res.observed, "null_mean": res.null_mean, "null_std": res.null_std,
            "null_q95": res.null_q95, "p_value": res.p_value,
            "n_permutations": res.n_permutations}


def compare_layer(x: np.ndarray, y: np.ndarray, cfg: DriftSpec, where: str) -> dict[str, Any]:
    """Every configured measure (and CKA null floor) of one layer of two models.

    x, y: (n_examples, features), rows paired. Returns {values: {measure: float | None},
    undefined: {measure: reason}, null: {cka measure: null_floor(...) | None}}. `where` names
    the comparison and layer in errors (bad input is an error, an undefined measure is not).
    """
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    null: dict[str, dict[str, Any] | None] = {}
    for name in cfg.measures:
        try:
            values[name] = float(measure(name, x, y, cfg))
            if name in CKA_MEASURES and cfg.null_permutations > 0:
                null[name] = null_floor(name, x, y, cfg)
        except DegenerateInputError as err:
            values[name] = None
            undefined[name] = err.reason
            if name in CKA_MEASURES and cfg.null_permutations > 0:
                null[name] = None
        except PeftlabError as err:
            raise PeftlabError(f"{where}: {name}: {err}") from None
    return {"values": values, "undefined": undefined, "null": null}


def check_finite(arr: np.ndarray, where: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise PeftlabError(f"{where}: {bad} NaN or infinite values in the stored representations "
                           f"(shape {arr.shape}); rerun `peftlab represent`")


# ----------------------------------------------------------------------------- summaries


def layer_means(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of each measure over the layers of each comparison, undefined layers left out.

    records: `drift` table records. Returns one dict per (task, method, kind, run_a, run_b,
    measure): {..., mean (None when no layer is defined, never NaN), n_layers (defined),
    n_undefined, undefined_layers}.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["task"], rec["method"], rec["kind"], rec["run_a"], rec["run_b"])].append(rec)
    out = []
    for (task, method, kind, run_a, run_b), recs in sorted(groups.items()):
        names = sorted({m for r in recs for m in r["values"]})
        for name in names:
            defined = [r["values"][name] for r in recs
                       if r["values"].get(name) is not None and math.isfinite(r["values"][name])]
            skipped = sorted(r["layer"] for r in recs if r["values"].get(name) is None)
            out.append({"task": task, "method": method, "kind": kind, "run_a": run_a,
                        "run_b": run_b, "measure": name,
                        "mean": float(np.mean(defined)) if defined else None,
                        "n_layers": len(defined), "n_undefined": len(skipped),
                        "undefined_layers": skipped})
    return out


# ----------------------------------------------------------------------------- the stage


def drift_stage(ctx: Context) -> None:
    """Fill the `drift` table (representations) and the `weights` table (weight updates)."""
    representation_drift(ctx)
    weight_drift(ctx)


def _finished(ctx: Context) -> list[RunConfig]:
    from peftlab.study import run_status

    return [rc for rc in ctx.study.runs() if run_status(ctx.store, rc)["status"] == "done"]


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
        for kind, method, rc_a, rc_b in comparisons(task_runs):
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
            ctx.store.replace_where("drift", prefix, items)
            done += 1
        ctx.console.print(f"drift {task}: {done} comparisons computed, {skipped} up to date")


def _compare_runs(ctx: Context, task: str, kind: str, method: str, key_a: str,
                  rc_a: RunConfig | None, rc_b: RunConfig, reps: Any, stamp: dict[str, Any],
                  settings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
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
        items.append((_record_key(kind, key_a, rc_b.run_id, layer), {
            "task": task,
            "method": method,
            "method_type": rc_b.method_type,
            "kind": kind,
            "run_a": key_a,
            "run_b": rc_b.run_id,
            "seed_a": None if rc_a is None else rc_a.seed,
            "seed_b": rc_b.seed,
            "layer": layer,
            "layer_name": names[layer],
            "n_layers": len(layers_a),
            "n": int(x.shape[0]),
            "d_a": int(x.shape[1]),
            "d_b": int(y.shape[1]),
            "pooling": man_b["pooling"],
            "probe_hash": man_b["probe_hash"],
            **result,
            "knn_k": knn_k(cfg, int(x.shape[0])) if "knn" in cfg.measures else None,
            "settings": settings,
            "stamp": stamp,
            "provenance": prov,
        }))
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
    from peftlab.finetune import load_base, load_tuned
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
        _, base = load_base(ctx, todo[0][0])
        base_weights = {n: w.detach().float().cpu()
                        for n, w in backbone_linear_weights(base).items()}
        del base
        base_u: dict[str, Any] = {}  # the base's SVD, shared by every run of the task
        prov = provenance()
        for rc, stamp in todo:
            method = get_method(rc.method_type)
            _, tuned = load_tuned(ctx, rc.run_id, device="cpu")
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
                rec: dict[str, Any] = {
                    "task": task, "run_id": rc.run_id, "method": rc.method,
                    "method_type": rc.method_type, "seed": rc.seed, "is_peft": method.is_peft,
                    "module": name, "matrix": leaf, "block": block_index(name),
                    "shape": list(weight.shape),
                    "update": "merged - base" if method.is_peft else "tuned - base",
                    "settings": settings, "stamp": stamp, "provenance": prov,
                }
                try:
                    if name not in base_u:
                        base_u[name] = base_left_singular_vectors(base_weights[name])
                    stats = update_stats(base_weights[name], weight.detach(),
                                         top_k=cfg.intruder_top_k, epsilon=cfg.intruder_epsilon,
                                         base_u=base_u[name])
                    rec.update(stats.as_dict(), undefined=None)
                except DegenerateInputError as err:
                    rec["undefined"] = err.reason
                except PeftlabError as err:
                    raise PeftlabError(f"weights {task}: run {rc.run_id}, block "
                                       f"{block_index(name)}, module {name}: {err}") from None
                items.append((f"{rc.run_id}/{name}", rec))
            ctx.store.replace_where("weights", f"{rc.run_id}/", items)
            ctx.console.print(f"weights {task}: run {rc.run_id}: {len(items)} matrices")

