"""`unmerged`: the base model plus one PEFT adapter, served as a `PeftModel` (adapter path live)."""

from __future__ import annotations

from typing import Any

from peftlab.bench.loading import artifact_head, served_head
from peftlab.bench.mode import Comparison, Mode, register


@register
class Unmerged(Mode):
    name = "unmerged"
    order = 20
    label = "unmerged adapter"
    fast_path = True
    comparisons = (
        Comparison("merged", "same", claim="what the live adapter path costs"),
        Comparison("full", "full", claim="an unmerged adapter against full fine-tuning"),
    )

    def load(self, env) -> Any:
        return env.loader.adapters(env.artifacts, env.seed)

    def adapters(self, env):
        return [env.artifacts[0]["name"]]

    def gate(self, env, model, call):
        from peftlab.artifacts import merge

        art = env.artifacts[0]
        requests = env.gate_requests(art["task"])
        served = env.logits(call, requests)
        # References are loaded under another seed: an adapter whose head did not load would sit
        # on a differently drawn fresh head and disagree.
        reloaded = env.loader.adapters([art], env.seed + 1)
        ref_reloaded = env.logits(env.plain_call(reloaded), requests)
        merged = merge(reloaded)
        ref_merged = env.logits(env.plain_call(merged), requests)
        del reloaded, merged
        env.release()
        head_names = env.head_names(model)
        return [
            env.compare("unmerged", served, "unmerged reloaded from disk (other seed)",
                        ref_reloaded),
            env.compare("unmerged", served, "merged (merge_and_unload)", ref_merged),
            env.compare_head("unmerged head", served_head(model, art["name"]),
                             artifact_head(art, head_names)),
        ]
