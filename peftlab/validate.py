"""Checks that need more than the spec file: the model's structure, the device, the data.

They run in `peftlab validate` and at the start of `peftlab run`, so a bad target module, QLoRA on
a CPU or a batch larger than the training split fails in seconds, not at step 500.
"""

from __future__ import annotations

from typing import Any

from peftlab.errors import SpecError
from peftlab.spec import Study


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


def deep_check(study: Study, *, check_data: bool = True) -> list[str]:
    """Raise SpecError/DataError for what cannot work; return notes on what was not checked."""
    from peftlab.data import StudyData
    from peftlab.methods import get_method
    from peftlab.models import resolve_device

    notes: list[str] = []
    spec = study.spec
    check_serving(study)
    device = resolve_device(spec.device)
    linear = model_linear_names(study)
    if linear is None:
        notes.append("model config not in the local cache: target modules are checked when the model loads")
    for name, entry in spec.methods.items():
        rc = study.resolve(spec.tasks[0].name, name, spec.seeds[0])
        get_method(entry["type"]).check(
            rc.params, linear_names=linear, device=device, where=study.where(f"methods.{name}"))
    if check_data:
        local = study.data_source()[0] != "hub"
        if not local and not all(t.files for t in spec.tasks):
            notes.append("data from the hub is checked when it is first loaded")
        # files and local GLUE folders are cheap to read: check rows and batch sizes now
        tasks = {t.name for t in spec.tasks if local or t.files is not None}
        _check_batches(study, StudyData(study), tasks)
    return notes


def check_serving(study: Study) -> None:
    """bench.serving.configs must name registered serving configurations that a spec may ask
    for (`bench.serving_configs.spec_configs`), at least one, each once."""
    from peftlab.bench.serving_configs import spec_configs

    serving = study.spec.bench.serving
    if serving is None:
        return
    allowed = spec_configs()
    unknown = [c for c in serving.configs if c not in allowed]
    if unknown:
        raise SpecError(f"{study.where('bench.serving.configs')}: unknown serving "
                        f"configuration(s) {unknown}; expected any of {allowed}")
    if not serving.configs or len(set(serving.configs)) != len(serving.configs):
        raise SpecError(f"{study.where('bench.serving.configs')}: must be a non-empty list "
                        f"without repeats, got {serving.configs}")


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
