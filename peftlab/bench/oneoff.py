"""A one-off deployment benchmark without a study: a model, some adapters (or none), some modes.

    peftlab bench --model ./tiny-llama --adapter runs/a/artifact --adapter runs/b/artifact \
        --mode unmerged --mode merged --batch-size 1 --batch-size 8 --data-dir ../shared/data/glue
    peftlab bench --model minilm                  # the base model alone (mode base)

    from peftlab.bench import bench_oneoff
    from peftlab.spec import BenchSpec, ModelSpec
    records = bench_oneoff(ModelSpec(name="smollm2-135m"), BenchSpec(batch_sizes=[1, 32]),
                           ["out/sst2-lora/artifact"], modes=["unmerged", "merged"],
                           data_dir="../shared/data/glue")

It goes through the same planner and runner as a study's bench stage (`peftlab.bench.plan`):
the adapters become candidates, every mode asked for plans its units from them, each unit runs in
a process of its own after the correctness gate. Requests are evaluation examples of a task
(default sst2) from a local GLUE folder (`data_dir`) or the hub. Each record is what the study's
`bench` table would hold, plus its `key`. Every mode asked for must be able to serve the adapters
given: otherwise one PeftlabError says why; with no modes asked for, every registered mode that
can serve them runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.artifacts import adapter_name
from peftlab.bench.loading import artifact_kind, check_artifact, method_type_of, structures
from peftlab.bench.modes import UnsupportedMode, get_mode, mode_names
from peftlab.bench.plan import Candidate, PlanSettings, plan_units, run_units
from peftlab.bench.units import check_lengths, sweep_points
from peftlab.errors import PeftlabError, SpecError

if TYPE_CHECKING:
    from peftlab.spec import BenchSpec, ModelSpec


def bench_oneoff(model: ModelSpec, bench: BenchSpec, adapters: Sequence[str], *,
                 modes: Sequence[str] | None = None, task: str = "sst2",
                 adapter_tasks: Sequence[str] | None = None, data_dir: str | Path | None = None,
                 eval_samples: int | None = 256, device: str = "auto", console: Any = None
                 ) -> list[dict[str, Any]]:
    """Benchmark `modes` of `model` with `adapters` (artifact folders, possibly none); return one
    record per (mode, unit, batch size, sequence length), each with its `key`.

    model, bench: the same spec sections a study has (`ModelSpec`, `BenchSpec`): their defaults
    are the study's defaults. adapters: PEFT adapter folders or fully fine-tuned model folders,
    as save_pretrained wrote them. adapter_tasks: the task of each adapter (its requests and head
    size); default `task` for all. modes: registered modes; None picks every mode that can serve
    the adapters (the base model alone when there are none). data_dir: a local GLUE folder; None
    reads the hub. eval_samples: evaluation examples used as requests (seeded subsample; None:
    all). Latencies in the records are ns (raw) and ms (summaries).
    """
    from peftlab.methods import get_method
    from peftlab.models import model_revision, resolve_device, resolve_model
    from peftlab.store import provenance
    from peftlab.tasks import get_task

    adapters = [str(a) for a in adapters]
    if adapter_tasks is not None and len(adapter_tasks) != len(adapters):
        raise SpecError(f"adapter_tasks: {len(adapter_tasks)} task(s) given for {len(adapters)} "
                        "adapter(s); give one task per adapter")
    # Every argument is checked before any data or model is read (the evaluation data may come
    # from the hub): mode, model and task names, and that each adapter is a saved folder.
    requested = [get_mode(m).name for m in modes or []]  # unknown names fail here
    resolved = resolve_model(model.name, gguf_file=model.gguf_file, revision=model.revision)
    task_names = list(adapter_tasks) if adapter_tasks is not None else [task] * len(adapters)
    for t in dict.fromkeys(task_names or [task]):
        get_task(t)
    given, seen = [], set()
    for i, path in enumerate(adapters):
        p = Path(path).expanduser().resolve()
        label = p.parent.name if p.name == "artifact" else p.name
        name = adapter_name(label)
        if name in seen:
            name = adapter_name(f"{label}_{i}")
        seen.add(name)
        given.append((p, name, artifact_kind(p, name)))  # a missing folder fails here
    device = resolve_device(device)
    model_d = model.model_dump(mode="json")
    tasks = {t: _task_info(t, data_dir, eval_samples, bench.seed)
             for t in dict.fromkeys(task_names or [task])}

    structure = structures(model_d)

    candidates = []
    for (p, name, kind), t in zip(given, task_names, strict=True):
        mtype = method_type_of(p)
        try:
            method = get_method(mtype)
        except PeftlabError:
            method = None  # a PEFT type peftlab has no method for: it can still serve unmerged
        info = tasks[t]
        art = {"name": name, "path": str(p), "kind": kind, "task": t, "run_id": None,
               "method_type": mtype, "params": None, "num_labels": info["num_labels"],
               "label_names": info["label_names"]}
        check_artifact(art, structure(info["num_labels"]))
        # Outside a study the adapters form one group (one method, no seed).
        candidates.append(Candidate(art, None, None, method))
    check_lengths(list(bench.seq_lengths),
                  structure(tasks[task_names[0] if task_names else task]["num_labels"]),
                  "peftlab bench --seq-length")
    for m in requested:
        _check_requested(m, candidates)

    settings = PlanSettings(tasks=list(tasks), seeds=[None], multi_k=bench.multi_k,
                            variants=[""] + (["+compile"] if bench.compile else [])
                            + (["+fast"] if bench.fast_path else []))
    # bench.modes None (a BenchSpec built outside a study): every registered mode
    modes = bench.modes if bench.modes is not None else mode_names()
    units = plan_units(candidates, modes=requested or list(modes), settings=settings)
    if requested:
        bad = [u for u in units if u.unsupported]
        if bad:
            raise UnsupportedMode(bad[0].unsupported)
    else:  # nobody asked for a mode that cannot serve these adapters: leave it out
        units = [u for u in units if not u.unsupported]
    points = sweep_points(bench.batch_sizes, bench.seq_lengths)
    extra = {"provenance": provenance(model_revision=model_revision(resolved))}
    records: list[dict[str, Any]] = []

    def sink(unit: Any, recs: list[tuple[str, dict[str, Any]]], result: dict[str, Any]) -> None:
        if console is not None:
            console.print(f"bench {unit.mode}/{unit.name}: {result.get('status')}")
        records.extend({"key": key, **rec} for key, rec in recs)

    run_units([(u, points) for u in units], model=model_d, bench=bench, device=device,
              tasks=tasks, extra=extra, sink=sink)
    return records


def _check_requested(mode: str, candidates: list[Candidate]) -> None:
    """A mode asked for on the command line must be able to serve what was given."""
    m = get_mode(mode)
    if m.max_artifacts == 0:
        return
    if m.max_artifacts == 1:
        mine = [c for c in candidates if c.kind == m.artifact_kind]
        if not mine:
            what = "a PEFT adapter" if m.artifact_kind == "peft" else "a full model"
            given = [f"{c.artifact['name']} ({c.kind})" for c in candidates] or "none"
            raise UnsupportedMode(f"mode {mode!r} serves {what} (--adapter); given: {given}")
        for c in mine:
            m.check([c.artifact], [c.method_obj])
        return
    m.check([c.artifact for c in candidates], [c.method_obj for c in candidates])


def _task_info(name: str, data_dir: str | Path | None, n: int | None, seed: int
               ) -> dict[str, Any]:
    from peftlab.data import task_info
    from peftlab.tasks import get_task, load_split, subsample

    task = get_task(name)
    source = "glue_dir" if data_dir is not None else "hub"
    return task_info(task, subsample(load_split(task, "eval", source=source, glue_dir=data_dir),
                                     n, seed))
