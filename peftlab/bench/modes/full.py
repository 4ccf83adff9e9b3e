"""`full`: a fully fine-tuned model, loaded whole from its own folder."""

from __future__ import annotations

from typing import Any

from peftlab.artifacts import artifact_weight_files
from peftlab.bench.loading import artifact_head, served_head
from peftlab.bench.mode import Mode, register


@register
class Full(Mode):
    name = "full"
    order = 10
    label = "fully fine-tuned model"
    artifact_kind = "full"

    def weight_files(self, env):
        return artifact_weight_files(env.artifacts[0])

    def load(self, env) -> Any:
        return env.loader.full(env.artifacts[0])

    def gate(self, env, model, call):
        art = env.artifacts[0]
        requests = env.gate_requests(art["task"])
        served = env.logits(call, requests)
        # Reloaded under another seed: a head missing from the file would be drawn afresh and
        # differ, where a complete artifact reloads to the same logits.
        env.reseed(env.seed + 1)
        again = env.loader.full(art)
        ref = env.logits(env.plain_call(again), requests)
        del again
        env.release()
        env.reseed(env.seed)
        head_names = env.head_names(model)
        return [
            env.compare("full", served, "full reloaded from disk (other seed)", ref),
            env.compare_head("full head", served_head(model), artifact_head(art, head_names)),
        ]
