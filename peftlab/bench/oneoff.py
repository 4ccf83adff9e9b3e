"""A one-off deployment benchmark without a study: a model, some adapters, some modes.

    peftlab bench --model ./tiny-llama --adapter runs/a/artifact --adapter runs/b/artifact \
        --mode unmerged --mode merged --batch-size 1 --batch-size 8 --data-dir ../shared/data/glue

    from peftlab.bench import bench_oneoff
    records = bench_oneoff("smollm2-135m", ["out/sst2-lora/artifact"], ["unmerged", "merged"],
                           batch_sizes=[1, 32], data_dir="../shared/data/glue")

Requests are evaluation examples of a task (default sst2) from a local GLUE folder (`data_dir`)
or the hub. Each record is what the study's `bench` table would hold, plus its `key`. Every mode
asked for must be able to serve the adapters given: otherwise one PeftlabError says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from peftlab.artifacts import adapter_name
from peftlab.bench.loading import (
    artifact_kind,
    base_structure,
    check_artifact,
    method_type_of,
)
from peftlab.bench.modes import UnsupportedMode, get_mode
from peftlab.bench.runner import run_isolated
from peftlab.bench.units import (
    Unit,
    bench_settings,
    check_lengths,
    make_job,
    raise_worker_error,
    settings_hash,
    sweep_points,
    timeout_for,
    unit_records,
)
from peftlab.errors import PeftlabError, SpecError


def bench_oneoff(
    model: str,
    adapters: Sequence[str],
    modes: Sequence[str] | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    seq_lengths: Sequence[int | str] = ("data",),
    task: str = "sst2",
    adapter_tasks: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    eval_samples: int | None = 256,
    device: str = "auto",
    dtype: str = "float32",
    max_length: int = 128,
    gguf_file: str | None = None,
    warmup: int = 10,
    min_iterations: int = 50,
    min_seconds: float = 2.0,
    max_seconds: float = 60.0,
    threads: int | None = None,
    interleave: str = "random",
    compile: bool = False,
    seed: int = 0,
    gate_examples: int = 32,
    load_repeats: int = 3,
    drop_page_cache: bool = True,
    isolation: str = "forkserver",
    console: Any = None,
) -> list[dict[str, Any]]:
    """Benchmark `modes` of `model` with `adapters` (artifact folders); return one record per
    (mode, unit, batch size, sequence length), each with its `key`.

    adapters: PEFT adapter folders or fully fine-tuned model folders, as save_pretrained wrote
    them. adapter_tasks: the task of each adapter (its requests and head size); default `task`
    for all. modes: any of base, full, unmerged, merged, multi, mixed; None picks what the
    artifacts allow. data_dir: a local GLUE folder; None reads the hub. eval_samples: evaluation
    examples used as requests (seeded subsample; None: all). Timing arguments as in the spec's
    `bench` section. isolation: "forkserver" (default), "subprocess" or "in-process" (debugging
    only). Latencies in the records are ns (raw) and ms (summaries).
    """
    from peftlab.errors import format_validation
    from peftlab.methods import get_method
    from peftlab.models import model_revision, resolve_device, resolve_model
    from peftlab.spec import BenchSpec, ModelSpec
    from peftlab.store import provenance

    adapters = [str(a) for a in adapters]
    if adapter_tasks is not None and len(adapter_tasks) != len(adapters):
        raise SpecError(f"adapter_tasks: {len(adapter_tasks)} task(s) given for {len(adapters)} "
                        "adapter(s); give one task per adapter")
    for m in modes or []:
        get_mode(m)  # unknown names fail here, listing the modes
    try:
        model_spec = ModelSpec(name=model, gguf_file=gguf_file, dtype=dtype,
                               max_length=max_length)
        chosen = {"modes": list(dict.fromkeys(m.split("+")[0] for m in modes))} if modes else {}
        bench = BenchSpec(
            **chosen, batch_sizes=list(batch_sizes), seq_lengths=list(seq_lengths), warmup=warmup,
            min_iterations=min_iterations, min_seconds=min_seconds, max_seconds=max_seconds,
            interleave=interleave, threads=threads, compile=compile, seed=seed,
            gate_examples=gate_examples, load_repeats=load_repeats,
            drop_page_cache=drop_page_cache)
    except ValidationError as e:
        raise SpecError(format_validation(e, "peftlab bench")) from None
    device = resolve_device(device)
    model_d = model_spec.model_dump(mode="json")
    settings = bench_settings(bench)
    digest = settings_hash(settings, model_d, device)
    task_names = list(adapter_tasks) if adapter_tasks is not None else [task] * len(adapters)
    tasks = {t: _task_info(t, data_dir, eval_samples, seed)
             for t in dict.fromkeys(task_names or [task])}

    bases: dict[int, dict[str, Any]] = {}
    artifacts, methods, seen = [], [], set()
    for i, (path, t) in enumerate(zip(adapters, task_names, strict=True)):
        p = Path(path).expanduser().resolve()
        label = p.parent.name if p.name == "artifact" else p.name
        name = adapter_name(label)
        if name in seen:
            name = adapter_name(f"{label}_{i}")
        seen.add(name)
        kind = artifact_kind(p, name)
        mtype = method_type_of(p)
        try:
            method = get_method(mtype)
        except PeftlabError:
            method = None  # a PEFT type peftlab has no method for: it can still serve unmerged
        n = tasks[t]["num_labels"]
        a = {"name": name, "path": str(p), "kind": kind, "task": t, "run_id": None,
             "method_type": mtype, "num_labels": n, "label_names": tasks[t]["label_names"]}
        if n not in bases:
            bases[n] = base_structure(model_d, n)
        check_artifact(a, bases[n])
        artifacts.append(a)
        methods.append(method)
    n0 = tasks[task_names[0] if task_names else task]["num_labels"]
    if n0 not in bases:
        bases[n0] = base_structure(model_d, n0)
    check_lengths(list(bench.seq_lengths), bases[n0], "peftlab bench --seq-len")

    units = _units(list(modes) if modes else _default_modes(artifacts), artifacts, methods,
                   task_names or [task], compile)
    points = sweep_points(bench.batch_sizes, bench.seq_lengths)
    resolved = resolve_model(model, gguf_file=gguf_file)
    extra = {"provenance": provenance(model_revision=model_revision(resolved))}
    records = []
    for unit in units:
        if console is not None:
            console.print(f"bench {unit.mode}/{unit.name}")
        job = make_job(unit, model=model_d, device=device, settings=settings, tasks=tasks,
                       points=points)
        result = run_isolated(job, isolation=isolation, timeout_s=timeout_for(points, settings))
        if result.get("status") == "error":
            raise_worker_error(unit, result)
        for key, rec in unit_records(unit, result, points, settings=settings, digest=digest,
                                     extra=extra):
            records.append({"key": key, **rec})
    return records


def _default_modes(artifacts: list[dict[str, Any]]) -> list[str]:
    peft = [a for a in artifacts if a["kind"] == "peft"]
    out = ["base"]
    if any(a["kind"] == "full" for a in artifacts):
        out.append("full")
    if peft:
        out += ["unmerged", "merged"]
    if len(peft) >= 2:
        out.append("multi")
    return out


def _units(modes: list[str], artifacts: list[dict[str, Any]], methods: list[Any],
           task_names: list[str], compile: bool) -> list[Unit]:
    """Units for the modes asked for; a mode that cannot serve what it was given raises."""
    units = []
    variants = [""] + (["+compile"] if compile else [])
    for mode in modes:
        name = mode.split("+")[0]
        m = get_mode(name)
        suffixes = ["+compile"] if mode.endswith("+compile") else variants
        if name == "base":
            groups = [([], [t]) for t in dict.fromkeys(task_names)]
        elif m.max_artifacts == 1:
            mine = [i for i, a in enumerate(artifacts) if a["kind"] == m.artifact_kind]
            if not mine:
                what = "a PEFT adapter" if m.artifact_kind == "peft" else "a full model"
                given = [f"{a['name']} ({a['kind']})" for a in artifacts] or "none"
                raise UnsupportedMode(f"mode {name!r} serves {what} (--adapter); given: {given}")
            for i in mine:
                m.check([artifacts[i]], [methods[i]])
            groups = [([i], [artifacts[i]["task"]]) for i in mine]
        else:
            idx = list(range(len(artifacts)))
            m.check(artifacts, methods)
            groups = [(idx, [a["task"] for a in artifacts])]
        for ids, served in groups:
            arts = [artifacts[i] for i in ids]
            unit_name = "+".join(a["name"] for a in arts) or served[0]
            for v in suffixes:
                units.append(Unit(mode=name + v, name=unit_name, artifacts=arts,
                                  tasks_served=served,
                                  method_type=arts[0]["method_type"] if arts else None))
    return units


def _task_info(name: str, data_dir: str | Path | None, n: int | None, seed: int
               ) -> dict[str, Any]:
    from peftlab.data import task_info
    from peftlab.tasks import get_task, load_split, subsample

    task = get_task(name)
    source = "glue_dir" if data_dir is not None else "hub"
    return task_info(task, subsample(load_split(task, "eval", source=source, glue_dir=data_dir),
                                     n, seed))
