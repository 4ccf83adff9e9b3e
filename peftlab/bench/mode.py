"""The interface every deployment mode follows, and the registry.

Adding a mode is one file in `peftlab/bench/modes/` defining a `Mode` subclass with `@register`, plus
one import line in `peftlab/bench/modes/__init__.py` (or a `MODES.register` call from a plug-in). A mode says what it serves and how:

    check(artifacts, methods)   refuse (UnsupportedMode) what it cannot serve, before any process starts
    weight_files(env)           files a cold load reads (their page cache is dropped first)
    load(env)                   build the served model (timed: cold, then repeated loads)
    make_call(env, model, fwd)  request -> logits; everything a server does per request, switch included
    gate(env, model, call)      checks against reference models; a failure means: not timed
    stream(env, batch, seq)     the request stream of one sweep point
    observe(env, model)         bookkeeping after each timed request, outside the timer
    extras(env, timing, state)  mode-specific figures of a timed point (e.g. adapter switches)

`env` is the worker's `WorkerEnv`: loader, device, tasks and their encoded examples, settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from peftlab.errors import PeftlabError
from peftlab.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    from peftlab.bench.requests import Request
    from peftlab.bench.timing import Timing
    from peftlab.bench.worker import WorkerEnv


class UnsupportedMode(PeftlabError):
    """This mode cannot serve these artifacts (e.g. mixed batches of DoRA adapters)."""


class Mode:
    """One way of serving a fine-tuned model."""

    name: ClassVar[str]
    # Where the mode sits in plans, tables and figures (lower first): base, full, unmerged, ...
    order: ClassVar[float] = 100.0
    # What the mode serves: None (the base model), "full" (a fully fine-tuned model) or "peft".
    artifact_kind: ClassVar[str | None] = "peft"
    min_artifacts: ClassVar[int] = 1
    max_artifacts: ClassVar[int | None] = 1

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


MODES: Registry[Mode] = Registry("bench mode")


def register(cls: type[Mode]) -> type[Mode]:
    return MODES.register(cls)
