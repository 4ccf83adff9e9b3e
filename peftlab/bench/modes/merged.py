"""`merged`: the adapter folded into the base weights (`merge_and_unload`), served as a plain model.

The load time includes loading base + adapter and merging, the way a server that keeps adapters
on disk starts; the gate also saves the merged model and reloads it, the way one that ships merged
weights starts.
"""

from __future__ import annotations

import tempfile
from typing import Any

from peftlab.bench.loading import artifact_head, served_head
from peftlab.bench.mode import Capability, Comparison, Mode, alone_logits, register


@register
class Merged(Mode):
    name = "merged"
    order = 30
    label = "merged adapter"
    folds_adapter = True
    # a PEFT type peftlab has no method for is left to PEFT's merge_and_unload
    needs = Capability("supports_merge", "cannot be merged into the base weights",
                       unknown_serves=True, reason="merge_refusal")
    # "merging removes the overhead" is a no-difference claim: it carries an equivalence test
    comparisons = (Comparison("full", "full", equivalence=True,
                              claim="a merged adapter serves as fast as full fine-tuning"),)

    def load(self, env) -> Any:
        return env.loader.merged(env.artifacts[0], env.seed)

    def gate(self, env, model, call):
        from peftlab.models import saved_classifier_class

        art = env.artifacts[0]
        requests = env.gate_requests(art["task"])
        served = env.logits(call, requests)
        ref_unmerged = alone_logits(env, art, requests)
        # The deployment path that loses heads: save the merged model, load it back elsewhere.
        with tempfile.TemporaryDirectory(prefix="peftlab-merged-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            env.reseed(env.seed + 1)
            reloaded = saved_classifier_class(model.config).from_pretrained(
                tmp, dtype=model.dtype, use_safetensors=True).to(env.device).eval()
            env.reseed(env.seed)
        ref_reloaded = env.logits(env.plain_call(reloaded), requests)
        reloaded_head = served_head(reloaded)
        del reloaded
        env.release()
        head_names = env.head_names(model)
        stored = artifact_head(art, head_names)
        return [
            env.compare("merged", served, "unmerged (other seed)", ref_unmerged),
            env.compare("merged", served, "merged, saved and reloaded (other seed)", ref_reloaded),
            env.compare_head("merged head", served_head(model), stored),
            env.compare_head("merged head after save/reload", reloaded_head, stored),
        ]
