"""How far each run moved from the base model: per-layer similarity and weight-space updates.

    peftlab drift quickstart

Representations (from `peftlab represent`), per task, for every layer:
- `base_vs_run`: every configured measure between the base model and each finished run;
- `seed_to_seed`: the same measures between two runs of the same task and method that differ only
  in their seed (every pair): the negative control, i.e. how much two equally good runs disagree.
Each measure with a null (linear, debiased linear and RBF CKA: `similarity.cka_null`; centred and
uncentred cosine: `similarity.cosine_null`) carries its permutation floor at the same n and d (the
measure after shuffling the pairing of examples): null mean, 95% quantile (the floor the report
draws) and permutation p-value. The primary drift measure (`stats.primary.drift.measure`, debiased
linear CKA by default) also gets a percentile interval over `drift.bootstrap` resamples of probe
examples (`measures.bootstrap_interval`; the same seeded resamples for every run and layer). One
record per (task, method, kind, run pair, layer) goes to the `drift` table, keyed
"<kind>/<run_a>/<run_b>/L<layer:03d>" (run_a is "base" for base_vs_run).

A measure that is undefined for a layer (`DegenerateInputError`, e.g. CKA 0/0 when every example
has the same pooled vector) is stored as value None with its reason under `undefined`;
the stats stage's layer bands (`stages.stats.bands.band_value`) leave such layers out, so a summary
never turns into NaN.

Weights, per run and adapted weight matrix, to the `weights` table keyed "<run_id>/<module>":
`weights.update_stats` of the update, formed as the record's `update` says:
- "B A (exact)": methods that declare `exact_low_rank` (LoRA, QLoRA), whose update is exactly
  scaling * B @ A: computed from the adapter factors of the loaded PeftModel's layers
  (`weights.lora_delta`, float64), so its rank is that of the product, free of the rounding a
  merged matrix carries;
- "merged - base": other PEFT methods (DoRA, whose magnitude vector rescales the merged columns,
  AdaLoRA, IA3, and a LoRA with use_dora): the merged matrix (adapter on the base, upcast to
  float32, `merge_and_unload`) minus the base;
- "tuned - base": methods that are not PEFT (full fine-tuning), every linear layer of the
  backbone.
A method with a `quantized_base` (QLoRA's 4-bit base, placed on CUDA at load time) is read where
its base was placed; every other run is analysed on the CPU. Runs of a generation study are causal
LMs (base and runs loaded as such, `artifacts.load_run`); their weights are analysed the same way,
the LM head left out as a classification head is, and the stage does only this part (their
prompt representations are compared by the represent stage, `peftlab.gen_study.represent`).
The rank cut-off follows the precision of the weights as stored (`weights.rank_cutoff`): the
coarser of the base's and the tuned model's dtype for a difference (float32 for a float32 merge),
float64 for the exact product. Left out: the classification head (freshly initialised for the
task, so its "update" from a random start says nothing about drift from the pretrained model),
embeddings, norms and biases.

Readouts: when the represent stage extracted several poolings (`represent.pooling: [last, mean]`),
every comparison is made under each of them from its own files. The primary pooling's records
(the one the classification head reads; `readout` "primary") keep the keys above; an exploratory
pooling's are keyed "<pooling>/<kind>/<run_a>/<run_b>/L<layer:03d>" (`readout` "exploratory").
Records of a pooling the study no longer extracts as exploratory are removed.

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
from peftlab.extraction import BASE_KEY, layer_names, load_representations
from peftlab.measures import bootstrap_interval, compare_layer, knn_k
from peftlab.records import DriftRecord, WeightRecord, replace
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.runs import RunConfig

KINDS = ("base_vs_run", "seed_to_seed")


def check_finite(arr: np.ndarray, where: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise PeftlabError(f"{where}: {bad} NaN or infinite values in the stored representations "
                           f"(shape {arr.shape}); rerun `peftlab represent`")


# ----------------------------------------------------------------------------- the stage


def run(ctx: Context) -> None:
    """Fill the `drift` table (representations) and the `weights` table (weight updates)."""
    from peftlab.generation import is_generative

    if is_generative(ctx):  # its prompt representations were compared by `gen_study.represent`
        ctx.console.print("drift: this generation study's representations were compared by the "
                          "represent stage (table gen_drift); here: weight space")
    else:
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


def _record_key(kind: str, a: str, b: str, layer: int | None = None,
                pooling: str | None = None) -> str:
    """A drift record's key (or, without a layer, its comparison's prefix); pooling: None for
    the primary readout, the pooling's name for an exploratory one (`DriftRecord.key`)."""
    prefix = ("" if pooling is None else f"{pooling}/") + f"{kind}/{a}/{b}/"
    return prefix if layer is None else f"{prefix}L{layer:03d}"


def task_poolings(ctx: Context, task: str) -> list[str]:
    """The poolings the represent stage extracted for a task, primary first (from the base's
    manifest; a study extracted before several poolings existed has its one pooling)."""
    man = ctx.store.get("represent", f"{task}/{BASE_KEY}")
    if man is None:
        load_representations(ctx.store, task, BASE_KEY)  # raises: nothing was extracted
    return list(man.get("poolings") or [man["pooling"]])


def representation_drift(ctx: Context) -> None:
    """Per-layer measures, null floors and seed-to-seed controls for every task."""
    cfg = ctx.study.spec.drift
    settings = cfg.model_dump(mode="json")
    settings.pop("weight_modules")
    settings.pop("intruder_top_k")
    settings.pop("intruder_epsilon")
    settings["bootstrap_measure"] = primary_measure(ctx)
    from peftlab.logs import track

    runs = _finished(ctx)
    exploratory: set[str] = set()
    for tspec in ctx.study.spec.tasks:
        task = tspec.name
        task_runs = [rc for rc in runs if rc.task == task]
        if not task_runs:
            ctx.console.print(f"drift {task}: no finished runs")
            continue
        poolings = task_poolings(ctx, task)
        exploratory.update(poolings[1:])
        for i, pooling in enumerate(poolings):
            # one pooling's vectors in memory at a time
            cache: dict[str, tuple[dict[int, np.ndarray], dict[str, Any]]] = {}
            tag = None if i == 0 else pooling  # None: the primary readout's keys and files

            def reps(key: str, task: str = task, cache: dict = cache, tag: str | None = tag):
                if key not in cache:
                    cache[key] = load_representations(ctx.store, task, key, tag)
                return cache[key]

            done = skipped = 0
            for kind, method, rc_a, rc_b in track(
                    ctx.console, f"drift {task} ({pooling})", comparisons(task_runs),
                    label=lambda c: f"{c[0]} {'base' if c[2] is None else c[2].run_id}/"
                                    f"{c[3].run_id}"):
                key_a = BASE_KEY if rc_a is None else rc_a.run_id
                (_, man_a), (_, man_b) = reps(key_a), reps(rc_b.run_id)
                stamp = {"a": man_a["content_sha256"], "b": man_b["content_sha256"],
                         "probe_a": man_a["probe_hash"], "probe_b": man_b["probe_hash"],
                         "settings": _digest(settings)}
                prefix = _record_key(kind, key_a, rc_b.run_id, pooling=tag)
                first = ctx.store.get("drift", prefix + "L000")
                if first is not None and first.get("stamp") == stamp:
                    skipped += 1
                    continue
                items = _compare_runs(ctx, task, kind, method, key_a, rc_a, rc_b, reps, stamp,
                                      settings, "primary" if tag is None else "exploratory")
                replace(ctx.store, prefix, items, DriftRecord.TABLE)
                done += 1
            ctx.console.print(f"drift {task} ({pooling} pooling"
                              f"{', primary' if tag is None else ''}): {done} comparisons "
                              f"computed, {skipped} up to date")
    from peftlab.extraction import POOLINGS

    for pooling in POOLINGS:  # a pooling no longer extracted (or now primary): its old records
        if pooling not in exploratory:
            replace(ctx.store, f"{pooling}/", [], DriftRecord.TABLE)


def primary_measure(ctx: Context) -> str:
    """The measure whose bootstrap interval the drift records carry: the primary drift measure,
    or the first tested measure the study measures when the spec declares none."""
    from peftlab.measures import tested_measures

    primary = ctx.study.spec.stats.primary.drift
    if primary is not None:
        return primary.measure
    measured = [m for m in tested_measures(ctx.study.spec.stats)
                if m in ctx.study.spec.drift.measures]
    return measured[0] if measured else ctx.study.spec.drift.measures[0]


def _compare_runs(ctx: Context, task: str, kind: str, method: str, key_a: str,
                  rc_a: RunConfig | None, rc_b: RunConfig, reps: Any, stamp: dict[str, Any],
                  settings: dict[str, Any], readout: str = "primary") -> list[DriftRecord]:
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
        boot = bootstrap_interval(settings["bootstrap_measure"], x, y, cfg)
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
            readout=readout,
            probe_hash=man_b["probe_hash"],
            **result,
            bootstrap=boot,
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


def lora_factors(model: Any) -> dict[str, tuple[Any, Any, float]] | None:
    """{module name: (lora_A (r, in), lora_B (out, r), scaling)} of the active adapter of a
    PeftModel's LoRA layers, as float32 CPU tensors; None when some wrapped layer is not plain
    LoRA (DoRA's magnitude, AdaLoRA's SVD form): then only the merged matrix tells the update.
    Module names are the plain transformers model's (no PEFT prefix), head modules left out."""
    from peft.tuners.adalora import AdaLoraLayer
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    from peftlab.models import head_module_names

    inner = model.get_base_model()
    heads = tuple(head_module_names(inner))
    out = {}
    for name, module in inner.named_modules():
        if not isinstance(module, BaseTunerLayer) or name.split(".")[0] in heads:
            continue
        if not isinstance(module, LoraLayer) or isinstance(module, AdaLoraLayer):
            return None  # an AdaLoRA / IA3 / other tuner layer
        active = [a for a in module.active_adapters if a in module.lora_A]
        if len(active) != 1 or module.use_dora.get(active[0], False):
            return None
        a = active[0]
        out[name] = (module.lora_A[a].weight.detach().float().cpu(),
                     module.lora_B[a].weight.detach().float().cpu(), float(module.scaling[a]))
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


def _coarsest(*dtypes: Any) -> tuple[str, float]:
    """(name, machine epsilon) of the least precise of some torch floating dtypes."""
    import torch

    d = max(dtypes, key=lambda t: torch.finfo(t).eps)
    return str(d).removeprefix("torch."), float(torch.finfo(d).eps)


def _storage_dtype(model: Any) -> Any:
    """The floating dtype most of a model's parameters are stored in (before any upcast)."""
    from collections import Counter

    counts = Counter(p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    return counts.most_common(1)[0][0]


def weight_drift(ctx: Context) -> None:
    """update_stats of every adapted matrix of every finished run, to the `weights` table."""
    from peftlab import logs
    from peftlab.artifacts import ModelLoader, load_run
    from peftlab.methods import method_for, methods_with
    from peftlab.weights import base_left_singular_vectors, lora_delta, update_stats

    cfg = ctx.study.spec.drift
    # the methods measured from their factors (Method.exact_low_rank)
    settings = {"top_k": cfg.intruder_top_k, "epsilon": cfg.intruder_epsilon,
                "weight_modules": cfg.weight_modules, "rank_cutoff": "dtype-aware",
                "exact_lora": methods_with("exact_low_rank")}
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
        with logs.unit(f"weights/{task}/base"):  # its load report, labelled in log.txt
            if task_def.kind == "generation":  # a causal LM (its runs load as ones too)
                from peftlab.generation import load_causal_lm

                base = load_causal_lm(rc0.model, "cpu")[0]
            else:
                base = ModelLoader(rc0.model, "cpu").base(task_def.num_labels,
                                                          task_def.head_label_names)
        base_dtype = _storage_dtype(base)
        base_weights = {n: w.detach().float().cpu()
                        for n, w in backbone_linear_weights(base).items()}
        del base
        base_u: dict[str, Any] = {}  # the base's SVD, shared by every run of the task
        prov = provenance()
        # track: progress with an ETA, and each run's load is labelled with it in log.txt
        for rc, stamp in logs.track(ctx.console, f"weights {task}", todo,
                                    label=lambda t: f"weights/{t[0].run_id}"):
            method = method_for(rc.method_type, rc.params)
            if method.is_peft and not method.supports_merge and not method.exact_low_rank:
                # no weight update to read (a prompt-based method) or none PEFT can fold in
                ctx.console.print(f"weights {task}: run {rc.run_id}: not measured: "
                                  f"{method.merge_refusal or 'the adapter cannot be merged'}")
                continue
            # A quantised base (QLoRA's 4-bit, CUDA only) is read where its loading placed it;
            # everything else is analysed on the CPU.
            _, tuned = load_run(ctx, rc.run_id,
                                device=None if method.quantized_base else "cpu")
            factors = lora_factors(tuned) if method.exact_low_rank else None
            cut: tuple[str, float] | None = None  # None: the float64 product's own precision
            if factors is not None:
                update = "B A (exact)"
                tuned_weights: dict[str, Any] = dict(factors)
            elif method.is_peft:
                # merged in float32 (adapted_weights) onto a base stored in base_dtype
                import torch

                update, cut = "merged - base", _coarsest(base_dtype, torch.float32)
                tuned_weights = adapted_weights(tuned, True)
            else:
                update, cut = "tuned - base", _coarsest(base_dtype, _storage_dtype(tuned))
                tuned_weights = adapted_weights(tuned, False)
            del tuned
            items = []
            for name, weight in sorted(tuned_weights.items()):
                leaf = name.split(".")[-1]
                if cfg.weight_modules is not None and leaf not in cfg.weight_modules:
                    continue
                if name not in base_weights:
                    raise PeftlabError(f"weights {task}: run {rc.run_id}: module {name} has no "
                                       "counterpart in the base model")
                shape = list(base_weights[name].shape)
                stats, undefined = None, None
                try:
                    if name not in base_u:
                        base_u[name] = base_left_singular_vectors(base_weights[name])
                    common = {"top_k": cfg.intruder_top_k, "epsilon": cfg.intruder_epsilon,
                              "base_u": base_u[name]}
                    if factors is not None:
                        lora_a, lora_b, scaling = weight
                        stats = update_stats(base_weights[name],
                                             delta=lora_delta(lora_a, lora_b, scaling),
                                             **common).as_dict()
                        stats["lora_rank"] = int(lora_a.shape[0])
                    else:
                        stats = update_stats(base_weights[name], weight.detach(),
                                             dtype_eps=cut[1], **common).as_dict()
                        stats["dtype"] = cut[0]  # the weights were upcast: name the storage
                except DegenerateInputError as err:
                    undefined = err.reason
                except PeftlabError as err:
                    raise PeftlabError(f"weights {task}: run {rc.run_id}, block "
                                       f"{block_index(name)}, module {name}: {err}") from None
                items.append(WeightRecord(
                    task=task, run_id=rc.run_id, method=rc.method, method_type=rc.method_type,
                    seed=rc.seed, is_peft=method.is_peft, module=name, matrix=leaf,
                    block=block_index(name), shape=shape, update=update,
                    stats=stats, undefined=undefined, settings=settings, stamp=stamp,
                    provenance=prov))
            replace(ctx.store, f"{rc.run_id}/", items, WeightRecord.TABLE)
            ctx.console.print(f"weights {task}: run {rc.run_id}: {len(items)} matrices ({update})")
