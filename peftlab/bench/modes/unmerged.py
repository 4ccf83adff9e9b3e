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
        checks = [env.compare("unmerged", served, "unmerged reloaded from disk (other seed)",
                              ref_reloaded)]
        if _mergeable(art):  # a prompt-based adapter has no weight update to merge
            merged = merge(reloaded)
            ref_merged = env.logits(env.plain_call(merged), requests)
            checks.append(env.compare("unmerged", served, "merged (merge_and_unload)",
                                      ref_merged))
            del merged
        del reloaded
        env.release()
        head_names = env.head_names(model)
        return [
            *checks,
            env.compare_head("unmerged head", served_head(model, art["name"]),
                             artifact_head(art, head_names)),
        ]


def _mergeable(artifact: dict[str, Any]) -> bool:
    """Whether the artifact's method, as its parameters configure it, can be merged; a PEFT
    type peftlab has no method for is left to PEFT's merge_and_unload."""
    from peftlab.errors import PeftlabError
    from peftlab.methods import method_for

    try:
        return method_for(artifact.get("method_type"), artifact.get("params")).supports_merge
    except PeftlabError:
        return True
