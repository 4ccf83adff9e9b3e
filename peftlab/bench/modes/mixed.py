"""`mixed`: one batch holds requests for several adapters, served in one forward pass.

PEFT routes each row through its own adapter (`adapter_names=[...]`, one name per row), so no
`set_adapter` is needed between tenants. Methods that cannot do this (DoRA) are refused.
"""

from __future__ import annotations

import numpy as np

from peftlab.bench.loading import artifact_head, served_head
from peftlab.bench.mode import Capability, Comparison, alone_logits, register
from peftlab.bench.modes.multi import AdapterGroup


@register
class Mixed(AdapterGroup):
    name = "mixed"
    order = 50
    label = "several adapters in one batch"
    needs = Capability("supports_mixed_batch",
                       "does not support mixed-adapter batches (PEFT's adapter_names=[...]); use "
                       "mode 'multi' (one adapter per request) for it")
    comparisons = (Comparison("unmerged", "single", equivalence=True,
                              claim="mixed-adapter batches cost no more than one adapter"),)

    def make_call(self, env, model, forward):
        def call(request):
            return forward(**request.inputs, adapter_names=request.adapter_names)

        return call

    def gate(self, env, model, call):
        requests = env.mixed_gate_requests()
        served = env.logits(call, requests)
        rows = np.concatenate([r.adapter_names for r in requests])
        checks = []
        head_names = env.head_names(model)
        for art in env.artifacts:
            ref = alone_logits(env, art, requests)  # every row through this adapter
            mine = rows == art["name"]
            checks.append(env.compare(f"mixed[{art['name']}]", served[mine],
                                      f"{art['name']} alone (other seed)", ref[mine]))
            checks.append(env.compare_head(f"mixed[{art['name']}] head",
                                           served_head(model, art["name"]),
                                           artifact_head(art, head_names)))
        return checks

    def stream(self, env, batch_size, seq_len, seed):
        from peftlab.bench.requests import CycleStream

        return CycleStream(env.mixed_batches(batch_size, seq_len, seed))

    def extras(self, env, timing, state):
        names = [a["name"] for a in env.artifacts]
        per_batch = [len(set(r.adapter_names)) for r in timing.requests]
        used = sorted({a for r in timing.requests for a in r.adapter_names})
        return {
            "k": len(names),
            "adapters": names,
            "interleave": env.settings["interleave"],
            "adapters_used": used,
            "adapters_per_batch_mean": float(np.mean(per_batch)),
            # per timed request, the adapter index of each of its rows (per-task comparisons)
            "request_row_adapters": [[names.index(a) for a in r.adapter_names]
                                     for r in timing.requests],
        }
