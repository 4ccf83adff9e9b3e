"""The interface every deployment mode follows, and the registry.

Adding a mode is one file in `peftlab/bench/modes/` defining a `Mode` subclass with `@register`, plus
one import line in `peftlab/bench/modes/__init__.py` (or a `MODES.register` call from a plug-in).
Nothing else names modes: loading a study checks `bench.modes` against the registry, the planner asks
each mode for its units, the stats stage asks each mode which comparisons it joins, the report
labels and orders them by the mode's declarations. A mode says what it serves and how:

    plan(candidates, settings)  the units it serves from the study's trained artifacts
    comparisons                 the latency comparisons it joins (Comparison declarations)
    folds_adapter               it serves the adapter folded into the base: a live adapter's reference
    fast_path                   it has a "+fast" variant (live adapters fused into the base GEMMs)

    needs                       what it needs of each artifact's method (a Capability), or None
    check(artifacts, methods)   refuse (UnsupportedMode) what it cannot serve, before any process starts
    weight_files(env)           files a cold load reads (their page cache is dropped first)
    load(env)                   build the served model (timed: cold, then repeated loads)
    make_call(env, model, fwd)  request -> logits; everything a server does per request, switch included
    gate(env, model, call)      checks against reference models; a failure means: not timed
    stream(env, batch, seq)     the request stream of one sweep point
    observe(env, model)         bookkeeping after each timed request, outside the timer
    extras(env, timing, state)  mode-specific figures of a timed point (e.g. adapter switches)

`env` is the worker's `WorkerEnv` (`peftlab.bench.env`): loader, device, tasks and their encoded
examples, settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from peftlab.errors import PeftlabError, SpecError
from peftlab.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from peftlab.bench.env import WorkerEnv
    from peftlab.bench.requests import Request
    from peftlab.bench.timing import Timing


# The variant of a `fast_path` mode on the fused fast path (a unit's mode "unmerged+fast").
FAST_VARIANT = "+fast"


class UnsupportedMode(PeftlabError):
    """This mode cannot serve these artifacts (e.g. mixed batches of DoRA adapters)."""


@dataclass(frozen=True)
class Comparison:
    """A latency comparison a mode joins: this mode (a) against mode `other` (b), paired by seed.

    reference: "same" - b is the same method's unit of mode `other` on the same task;
    "full" - b is each full fine-tuning method of the study on the same task; "single" - b is the
    same adapters served one at a time by mode `other` (multi-adapter modes).
    equivalence: the comparison backs a no-difference claim, so it carries a TOST within
    stats.latency_margin. claim: what it answers, in a few words, for the report.
    """

    other: str
    reference: str = "same"
    equivalence: bool = False
    claim: str = ""


@dataclass(frozen=True)
class Capability:
    """What a mode needs of the method (`peftlab.methods.base.Method`) of every artifact it serves.

    flag: the method's attribute that must be true (e.g. "supports_merge"); refusal: what the
    refusal says the method's adapter cannot do; unknown_serves: whether an artifact of a PEFT
    type peftlab has no method for (method None) is served anyway; reason: the method's attribute
    that says why it lacks the capability (added to the refusal when set), or None.
    """

    flag: str
    refusal: str
    unknown_serves: bool = False
    reason: str | None = None

    def refuse(self, mode: str, artifact: dict[str, Any], method: Any) -> None:
        """Raise UnsupportedMode when `method` (None: unknown to peftlab) lacks the capability
        (asked of the method as the artifact's parameters configure it)."""
        if method is not None:
            method = method.for_params(artifact.get("params"))
        if self.unknown_serves if method is None else getattr(method, self.flag):
            return
        why = getattr(method, self.reason) if method is not None and self.reason else None
        raise UnsupportedMode(f"mode {mode!r}: method {artifact.get('method_type')!r} of adapter "
                              f"{artifact['name']!r} {self.refusal}" + (f": {why}" if why else ""))


class Mode:
    """One way of serving a fine-tuned model."""

    name: ClassVar[str]
    # Where the mode sits in plans, tables and figures (lower first): base, full, unmerged, ...
    order: ClassVar[float] = 100.0
    # What the mode serves: None (the base model), "full" (a fully fine-tuned model) or "peft".
    artifact_kind: ClassVar[str | None] = "peft"
    min_artifacts: ClassVar[int] = 1
    max_artifacts: ClassVar[int | None] = 1
    comparisons: ClassVar[tuple[Comparison, ...]] = ()
    label: ClassVar[str] = ""  # how the report names the mode ("merged adapter")
    # a FAST_VARIANT (bench.fast_path): the live adapters on `bench.fastpath.fused_lora`
    fast_path: ClassVar[bool] = False
    # The adapter folded into the base weights: served at the base model's compute, so it is
    # what a live adapter path's cost is measured against (its FLOPs share is then the
    # compute-only floor of that cost).
    folds_adapter: ClassVar[bool] = False
    needs: ClassVar[Capability | None] = None  # checked by `check` on each artifact's method

    @property
    def serves_several(self) -> bool:
        """Several adapters on one base (its units serve several tasks)."""
        return self.max_artifacts is None or self.max_artifacts > 1

    def plan(self, candidates: list[Candidate], settings: PlanSettings) -> list[Any]:
        """The units this mode serves (`bench.units.Unit`), from the study's trained artifacts.

        Default, by what the mode serves: no artifact - once per task; one artifact - once per
        candidate of `artifact_kind`; several - per method and seed, one adapter per task (see
        `plan.group_for_seed`). Override for anything else.
        """
        if self.max_artifacts == 0:
            return [u for task in settings.tasks
                    for u in make_units(self, task, [], [task], settings)]
        mine = [c for c in candidates if c.kind == self.artifact_kind]
        if self.max_artifacts == 1:
            return [u for c in mine for u in make_units(
                self, c.unit_name, [c], [c.task], settings, method=c.method, seed=c.seed)]
        units = []
        for method in dict.fromkeys(c.method for c in mine):
            group_of = [c for c in mine if c.method == method]
            for seed in settings.seeds:
                group, why = group_for_seed(group_of, seed, settings, method, self.name)
                if group:
                    units += make_units(self, "+".join(c.unit_name for c in group), group,
                                        [c.task for c in group], settings, method=method,
                                        seed=seed, unsupported=why)
        return units

    def check(self, artifacts: list[dict[str, Any]], methods: list[Any]) -> None:
        """Raise UnsupportedMode naming the artifact and what was expected."""
        n = len(artifacts)
        if n < self.min_artifacts or (self.max_artifacts is not None and n > self.max_artifacts):
            want = (f"exactly {self.min_artifacts}" if self.min_artifacts == self.max_artifacts
                    else f"at least {self.min_artifacts}")
            raise UnsupportedMode(f"mode {self.name!r} serves {want} adapter(s), got {n}"
                                  + (f" ({[a['name'] for a in artifacts]})" if n else ""))
        for a in artifacts:
            if a["kind"] != self.artifact_kind:
                what = "a PEFT adapter" if self.artifact_kind == "peft" else "a fully fine-tuned model"
                raise UnsupportedMode(f"mode {self.name!r} serves {what}, but {a['name']!r} "
                                      f"({a['path']}) is a {a['kind']} artifact "
                                      f"(method {a.get('method_type')!r})")
        if self.needs is not None:
            for a, m in zip(artifacts, methods, strict=True):
                self.needs.refuse(self.name, a, m)

    def weight_files(self, env: WorkerEnv) -> list[Path]:
        from peftlab.artifacts import artifact_weight_files

        files = list(env.loader.base_weight_files())
        for a in env.artifacts:
            files += artifact_weight_files(a)
        return files

    def load(self, env: WorkerEnv) -> Any:
        raise NotImplementedError

    def make_call(self, env: WorkerEnv, model: Any, forward: Any):
        """request -> output with .logits. Default: one forward pass of the batch."""

        def call(request: Request) -> Any:
            return forward(**request.inputs)

        return call

    def gate(self, env: WorkerEnv, model: Any, call: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def stream(self, env: WorkerEnv, batch_size: int, seq_len: int | str, seed: int) -> Any:
        """Requests of the mode's one task, cycled (`CycleStream`)."""
        from peftlab.bench.requests import CycleStream

        task = env.tasks_served[0]
        return CycleStream(env.batches(task, batch_size, seq_len, seed))

    def adapters(self, env: WorkerEnv) -> list[str]:
        """Names of the adapters whose path runs per request (FLOPs accounting)."""
        return []

    def observe(self, env: WorkerEnv, model: Any):
        """A function run after each timed request, outside the timer (None: nothing to note)."""
        return None

    def extras(self, env: WorkerEnv, timing: Timing, state: dict[str, Any]) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Candidate:
    """A trained artifact that can be served.

    artifact: the artifact dict (`peftlab.artifacts`); method: the study's method name (the
    one-off uses the method type); seed: the training seed (None outside a study); method_obj:
    the registered `Method` (None for a PEFT type peftlab has no method for).
    """

    artifact: dict[str, Any]
    method: str | None
    seed: int | None
    method_obj: Any = None

    @property
    def kind(self) -> str:
        return self.artifact["kind"]

    @property
    def task(self) -> str:
        return self.artifact["task"]

    @property
    def unit_name(self) -> str:
        return self.artifact.get("run_id") or self.artifact["name"]


@dataclass(frozen=True)
class PlanSettings:
    """What a mode's planner may use besides the candidates."""

    tasks: list[str]  # the tasks requests come from, in order
    seeds: list[int | None]  # seeds whose runs are served ([None] outside a study)
    multi_k: int | None  # adapters per multi-adapter unit (None: one per task)
    variants: list[str]  # "" (eager) and e.g. "+compile", "+fast"


def group_for_seed(candidates: list[Candidate], seed: int | None, settings: PlanSettings,
                   method: str | None, mode: str) -> tuple[list[Candidate], str | None]:
    """The adapters of one multi-adapter unit: one per task for `seed`, then other seeds'
    adapters (in seed order) when multi_k asks for more adapters than there are tasks.

    Returns (group, reason it cannot be served or None); an empty group: nothing to plan.
    """
    mine = [c for c in candidates if c.seed == seed]
    if not mine:
        return [], None
    k = settings.multi_k or (len(settings.tasks) if seed is not None else len(mine))
    pool = mine + [c for s in settings.seeds if s != seed for c in candidates if c.seed == s]
    if settings.multi_k is not None and settings.multi_k > len(mine):
        pool += [c for c in candidates if c.seed not in settings.seeds]
    if k > len(pool):
        raise SpecError(f"bench.multi_k: {k} adapters of method {method!r} are needed for mode "
                        f"{mode!r} but only {len(pool)} trained ones exist for seed {seed}")
    group = pool[:k]
    if len(group) < 2:
        return group, (f"mode {mode!r} needs at least 2 adapters on one base; method "
                       f"{method!r} has {len(group)} for seed {seed} (one task): add tasks or "
                       "set bench.multi_k with more seeds")
    return group, None


def make_units(mode: Mode, name: str, group: list[Candidate], served: list[str],
               settings: PlanSettings, *, method: str | None = None, seed: int | None = None,
               unsupported: str | None = None) -> list[Any]:
    """One `bench.units.Unit` per variant of `mode` on `group`; a unit the mode cannot serve
    (`Mode.check` raises UnsupportedMode) carries the reason in `unsupported`."""
    from peftlab.bench.units import Unit

    if unsupported is None:
        try:
            mode.check([c.artifact for c in group], [c.method_obj for c in group])
        except UnsupportedMode as err:
            unsupported = str(err)
    variants = [v for v in settings.variants if v != FAST_VARIANT or mode.fast_path]
    return [Unit(mode=mode.name + v, name=name, artifacts=[c.artifact for c in group],
                 tasks_served=served, method=method,
                 method_type=group[0].artifact.get("method_type") if group else None,
                 seed=seed, unsupported=unsupported if v != FAST_VARIANT else
                 unsupported or _fast_unsupported(group)) for v in variants]


def _fast_unsupported(group: list[Candidate]) -> str | None:
    """Why the fast path cannot serve these artifacts (their methods lack `Method.fast_path`:
    it fuses plain LoRA only), or None."""
    bad = [c.artifact["name"] for c in group
           if c.method_obj is None or not c.method_obj.fast_path]
    if bad:
        return (f"variant '+fast' fuses LoRA adapters only; {bad} are "
                f"{sorted({c.artifact.get('method_type') for c in group})}")
    return None


def alone_logits(env: WorkerEnv, artifact: dict[str, Any], requests: list[Request]) -> Any:
    """Logits (float32 [rows, num_labels]) of `requests` through adapter `artifact` loaded alone
    on a fresh base under another seed, the reference a gate compares served logits with: an
    adapter whose head did not load would sit on a differently drawn fresh head and disagree.
    The reference model is released before returning."""
    alone = env.loader.adapters([artifact], env.seed + 1)
    ref = env.logits(env.plain_call(alone), requests)
    del alone
    env.release()
    return ref


MODES: Registry[Mode] = Registry("bench mode")


def register(cls: type[Mode]) -> type[Mode]:
    return MODES.register(cls)
