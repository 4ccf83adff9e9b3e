"""Checks that need more than the spec's schema: registries, the model, the device, the data.

When a study loads (`peftlab.pipeline.load_study`, behind every command that takes a SPEC),
`check_names` checks the names the spec gives against the registries that define them (probe
tasks, similarity measures, bench modes, the primary endpoints) and fills in the defaults that
depend on a registry; `check_study` checks tasks, methods, overrides, the model and the trackers,
and resolves every run. `deep_check` runs in `peftlab validate` and at the start of `peftlab run`,
so a bad target module, QLoRA on a CPU or a batch larger than the training split fails in
seconds, not at step 500.
"""

from __future__ import annotations

from typing import Any

from peftlab.errors import PeftlabError, SpecError
from peftlab.plan import Study
from peftlab.spec import StudySpec


def _given(raw: Any, *keys: str) -> Any:
    """The value the spec file gives at a key path; None where it (or a section above) is left
    out or null: a default is the registry's own and needs no check."""
    for k in keys:
        if not isinstance(raw, dict) or raw.get(k) is None:
            return None
        raw = raw[k]
    return raw


def check_names(spec: StudySpec, raw: dict[str, Any], where: str) -> StudySpec:
    """`spec` with its registry-dependent defaults filled in (drift.measures: the default
    measures; bench.modes: every registered mode), once the names it gives are checked against
    the registries: probe tasks (registered, with classes), measures, modes, the primary drift
    measure (one the stats stage tests, and measured) and deployment comparisons (declared by a
    mode).

    `raw` is the spec file's mapping (`spec.read_spec`), `where` the file. SpecError has one line
    per problem, in the schema's form: file, key path, "Value error, ...", the value given.
    """
    from peftlab.bench.modes import get_mode, mode_names
    from peftlab.bench.serving_configs import spec_configs
    from peftlab.measures import MEASURES, default_measures, tested_measures
    from peftlab.tasks import get_task

    problems: list[tuple[str, str, Any]] = []  # (key path, message, the value given)
    probes = _given(raw, "forgetting", "tasks")
    for t in (spec.forgetting.tasks or []) if probes is not None else []:
        try:
            regression = t.regression if t.files is not None else not get_task(t.name).has_classes
        except PeftlabError as e:  # unknown task name: a validation error naming the key
            problems.append(("forgetting.tasks", str(e), probes))
            break
        if regression:
            problems.append(("forgetting.tasks", f"task {t.name!r} is a regression task: a "
                             "logistic probe needs classes", probes))
            break
    measures = _given(raw, "drift", "measures")
    if measures is not None:
        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            problems.append(("drift.measures", f"unknown measure(s) {unknown}; expected any of "
                             f"{MEASURES.names()}", measures))
    modes = _given(raw, "bench", "modes")
    if modes is not None:
        names = mode_names()
        unknown = [m for m in modes if m not in names]
        if unknown:
            problems.append(("bench.modes", f"unknown mode(s) {unknown}; expected any of {names}",
                             modes))
        elif len(set(modes)) != len(modes):
            problems.append(("bench.modes", f"modes must be unique, got {modes}", modes))
    configs = _given(raw, "bench", "serving", "configs")
    if configs is not None:
        allowed = spec_configs()
        unknown = [c for c in configs if c not in allowed]
        if unknown:
            problems.append(("bench.serving.configs", f"unknown serving configuration(s) "
                             f"{unknown}; expected any of {allowed}", configs))
        elif not configs or len(set(configs)) != len(configs):
            problems.append(("bench.serving.configs", "must be a non-empty list without "
                             f"repeats, got {configs}", configs))
    tested = _given(raw, "stats", "tested_measures")
    if tested is not None:
        measured = spec.drift.measures or default_measures()
        unknown = [m for m in tested if m not in measured]
        if unknown:
            problems.append(("stats.tested_measures", f"measure(s) {unknown} are not measured: "
                             f"expected any of drift.measures {measured}", tested))
    measure = _given(raw, "stats", "primary", "drift", "measure")
    if tested is not None and spec.stats.primary.drift is not None:
        measure = spec.stats.primary.drift.measure  # the default primary must be tested too
    if measure is not None and measure not in tested_measures(spec.stats):
        problems.append(("stats.primary.drift.measure", "the primary drift measure must be one "
                         f"the stats stage tests: {tested_measures(spec.stats)}, got {measure!r}",
                         measure))
    comparisons = _given(raw, "stats", "primary", "deployment", "comparisons")
    if comparisons is not None:
        declared = [f"{m}_vs_{c.other}" for m in mode_names() for c in get_mode(m).comparisons
                    if c.reference != "single"]
        unknown = [c for c in comparisons if c not in declared]
        if unknown or len(set(comparisons)) != len(comparisons):
            problems.append(("stats.primary.deployment.comparisons", "comparisons must be "
                             "distinct latency comparisons the bench modes declare "
                             f"({declared}), got {comparisons}", comparisons))
    if problems:
        raise SpecError("\n".join(f"{where}: {key}: Value error, {msg} (got {given!r})"
                                   for key, msg, given in problems))
    if spec.drift.measures is None:
        spec = spec.model_copy(update={"drift": spec.drift.model_copy(
            update={"measures": default_measures()})})
    if spec.bench.modes is None:
        spec = spec.model_copy(update={"bench": spec.bench.model_copy(
            update={"modes": mode_names()})})
    if spec.bench.serving is not None and spec.bench.serving.configs is None:
        spec = spec.model_copy(update={"bench": spec.bench.model_copy(update={
            "serving": spec.bench.serving.model_copy(update={"configs": spec_configs()})})})
    primary = spec.stats.primary.drift
    if primary is not None and primary.measure not in spec.drift.measures:
        raise SpecError(f"{where}: (top level): Value error, stats.primary.drift.measure "
                        f"{primary.measure!r} is not in drift.measures {spec.drift.measures}: "
                        "add it there, or name a measured one")
    return spec


def check_study(study: Study) -> None:
    """Cross-field checks that need the registries: tasks, methods, overrides, every run."""
    from peftlab.tasks import get_task

    spec = study.spec
    for i, t in enumerate(spec.tasks):
        if t.files is None:
            try:
                get_task(t.name)
            except PeftlabError as e:
                raise SpecError(f"{study.where(f'tasks[{i}].name')}: {e}") from None
    for name, entry in spec.methods.items():
        if not isinstance(entry, dict) or "type" not in entry:
            raise SpecError(
                f"{study.where(f'methods.{name}')}: expected a mapping with a `type` "
                "(e.g. {type: lora, r: 8})"
            )
    task_names = {t.name for t in spec.tasks}
    for i, ov in enumerate(spec.overrides):
        for t in ov.tasks or []:
            if t not in task_names:
                raise SpecError(
                    f"{study.where(f'overrides[{i}].tasks')}: unknown task {t!r}; "
                    f"the study's tasks are {sorted(task_names)}"
                )
        for m in ov.methods or []:
            if m not in spec.methods:
                raise SpecError(
                    f"{study.where(f'overrides[{i}].methods')}: unknown method {m!r}; "
                    f"the study's methods are {sorted(spec.methods)}"
                )
    if spec.data.source == "glue_dir" and study.data_dir is None and spec.data.glue_dir is None:
        raise SpecError(
            f"{study.where('data.source')}: 'glue_dir' needs data.glue_dir, --data-dir or "
            "PEFTLAB_DATA_DIR"
        )
    from peftlab.models import resolve_model

    m = spec.model
    try:
        resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    except PeftlabError as e:
        raise SpecError(f"{study.where('model.name')}: {e}") from None
    study.runs()  # resolves every run: bad method parameters and overrides fail here, not later
    from peftlab.tracking import check_trackers

    check_trackers(study)  # a tracker asked for and not installed: refused here, not mid-training


def model_linear_names(study: Study) -> list[str] | None:
    """Leaf names of the model's linear layers, from its config alone (no weights are read).

    None when the config is not available without the network (a hub id not in the local cache,
    or a GGUF file not converted yet): target modules are then checked when the model loads.
    """
    import torch
    from transformers import AutoConfig

    from peftlab.models import classifier_from_config, linear_module_names, resolve_model

    m = study.spec.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    if resolved.kind == "gguf":
        return None
    try:
        config = AutoConfig.from_pretrained(
            resolved.source, revision=m.revision, trust_remote_code=m.trust_remote_code,
            # validation must be quick and offline: a hub model is checked from the local cache
            local_files_only=True,
        )
    except (OSError, ValueError):
        if resolved.kind == "local":
            raise
        return None
    # The meta device builds the module tree without allocating any weights.
    with torch.device("meta"):
        model = classifier_from_config(resolved, config, m.head,
                                       trust_remote_code=m.trust_remote_code)
    return linear_module_names(model)


# Why model.head sentence-embedding cannot take the other ways PEFT feeds virtual tokens
# (`Method.prompt_input`)
_PROMPT_INPUTS = {"past_key_values": "a key/value prefix in every layer, which the head's "
                                     "encoder calls are not given",
                  "task_ids": "one prompt per task, chosen by task ids peftlab does not pass"}


def deep_check(study: Study, *, check_data: bool = True) -> list[str]:
    """Raise SpecError/DataError for what cannot work; return notes on what was not checked."""
    from peftlab.data import StudyData
    from peftlab.methods import get_method, method_for
    from peftlab.models import resolve_device

    notes: list[str] = []
    spec = study.spec
    device = resolve_device(spec.device)
    linear = model_linear_names(study)
    if linear is None:
        notes.append("model config not in the local cache: target modules are checked when the model loads")
    for name, entry in spec.methods.items():
        rc = study.resolve(spec.tasks[0].name, name, spec.seeds[0])
        get_method(entry["type"]).check(
            rc.params, linear_names=linear, device=device, where=study.where(f"methods.{name}"))
        method = method_for(entry["type"], rc.params)
        if method.feeds_embeddings and spec.model.head == "sentence-embedding" and (
                method.prompt_input != "inputs_embeds"):
            raise SpecError(
                f"{study.where(f'methods.{name}')}: model.head sentence-embedding takes a "
                "prompt-based method's virtual tokens only as embeddings in front of each text "
                "(PEFT's PromptTuningConfig, PromptEncoderConfig), but PEFT feeds "
                f"{rc.params.get('config', entry['type'])}'s as {method.prompt_input} "
                f"({_PROMPT_INPUTS.get(method.prompt_input, 'another input')}); use model.head: "
                "sequence-classification for it")
    if check_data:
        local = study.data_source()[0] != "hub"
        if not local and not all(t.files for t in spec.tasks):
            notes.append("data from the hub is checked when it is first loaded")
        # files and local GLUE folders are cheap to read: check rows and batch sizes now
        tasks = {t.name for t in spec.tasks if local or t.files is not None}
        _check_batches(study, StudyData(study), tasks)
    return notes


def _check_batches(study: Study, data: Any, tasks: set[str]) -> None:
    for rc in study.runs():
        if rc.task in tasks:
            check_batch_fits(study, rc, len(data.split(rc.task, "train")))


def check_batch_fits(study: Study, rc: Any, n_train: int) -> None:
    """The effective batch must fit in the training split (also checked when hub data loads)."""
    eff = rc.training.batch_size * rc.training.grad_accum
    if eff > n_train:
        raise SpecError(
            f"{study.where('training.batch_size')}: effective batch {eff} "
            f"(batch_size {rc.training.batch_size} x grad_accum {rc.training.grad_accum}) "
            f"is larger than the {n_train} training examples of task {rc.task!r}"
        )
