"""`base`: the pretrained model with a fresh (seeded) head, the reference point of every mode."""

from __future__ import annotations

from typing import Any

from peftlab.bench.mode import Mode, register


@register
class Base(Mode):
    name = "base"
    order = 0
    label = "base model (fresh head)"
    artifact_kind = None
    min_artifacts = 0
    max_artifacts = 0

    def weight_files(self, env):
        return list(env.loader.base_weight_files())

    def load(self, env) -> Any:
        info = env.task_info(env.tasks_served[0])
        return env.loader.base(info["num_labels"], info["label_names"], env.seed)

    def gate(self, env, model, call):
        # No trained weights to compare with: the check is that the reference point itself is
        # reproducible (a head the checkpoint lacks is drawn from the same seed every time).
        task = env.tasks_served[0]
        info = env.task_info(task)
        requests = env.gate_requests(task)
        served = env.logits(call, requests)
        again = env.loader.base(info["num_labels"], info["label_names"], env.seed)
        ref = env.logits(env.plain_call(again), requests)
        del again
        env.release()
        return [env.compare("base", served, "base reloaded (same seed)", ref)]
