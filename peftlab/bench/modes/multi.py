"""`multi`: k adapters loaded on one base; each request is for one adapter, requests interleave.

The request stream picks the adapter of each request round-robin or at random (seeded), as
requests from different tenants arrive; when it differs from the active one, `set_adapter` runs
inside the timed request, so switching cost is part of the latencies (the reference study grouped
requests by task and almost never timed a switch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peftlab.bench.loading import artifact_head, served_head
from peftlab.bench.mode import Comparison, Mode, UnsupportedMode, alone_logits, register


def check_group(mode: str, artifacts: list[dict[str, Any]]) -> None:
    """Adapters that share one base must share the head size and the PEFT method."""
    labels = {a["name"]: a["num_labels"] for a in artifacts}
    if len(set(labels.values())) > 1:
        raise UnsupportedMode(f"mode {mode!r}: adapters on one base must have heads of one size "
                              f"(PEFT copies the base head per adapter); got labels {labels}")
    types = {a["name"]: a.get("method_type") for a in artifacts}
    if len(set(types.values())) > 1:
        raise UnsupportedMode(f"mode {mode!r}: adapters on one base must use one PEFT method; "
                              f"got {types}")
    names = [a["name"] for a in artifacts]
    if len(set(names)) != len(names):
        raise UnsupportedMode(f"mode {mode!r}: adapter names must be distinct, got {names}")


class AdapterGroup(Mode):
    """Several adapters of one PEFT method loaded on one base (shared by `multi` and `mixed`)."""

    min_artifacts = 2
    max_artifacts = None

    def check(self, artifacts, methods):
        super().check(artifacts, methods)
        check_group(self.name, artifacts)

    def load(self, env) -> Any:
        return env.loader.adapters(env.artifacts, env.seed)

    def adapters(self, env):
        return [a["name"] for a in env.artifacts]


@register
class Multi(AdapterGroup):
    name = "multi"
    order = 40
    label = "several adapters, switched per request"
    fast_path = True
    comparisons = (Comparison("unmerged", "single", equivalence=True,
                              claim="several adapters on one base cost no more than one"),)

    def make_call(self, env, model, forward):
        state = env.state
        state["active"] = env.artifacts[0]["name"]

        def call(request):
            if request.adapter != state["active"]:
                # inference_mode=True: set_adapter would otherwise mark the adapter trainable
                model.set_adapter(request.adapter, inference_mode=True)
                state["active"] = request.adapter
            return forward(**request.inputs)

        return call

    def gate(self, env, model, call):
        checks = []
        head_names = env.head_names(model)
        for art in env.artifacts:
            requests = env.gate_requests(art["task"], adapter=art["name"])
            served = env.logits(call, requests)  # switches to this adapter, as serving does
            ref = alone_logits(env, art, requests)
            checks.append(env.compare(f"multi[{art['name']}]", served,
                                      f"{art['name']} alone (other seed)", ref))
            checks.append(env.compare_head(f"multi[{art['name']}] head",
                                           served_head(model, art["name"]),
                                           artifact_head(art, head_names)))
        return checks

    def stream(self, env, batch_size, seq_len, seed):
        from peftlab.bench.requests import InterleavedStream

        per_adapter = {a["name"]: env.batches(a["task"], batch_size, seq_len, seed,
                                              adapter=a["name"]) for a in env.artifacts}
        return InterleavedStream(per_adapter, interleave=env.settings["interleave"], seed=seed)

    def observe(self, env, model):
        """Bookkeeping after each timed request (outside the timer): the adapter PEFT reports."""
        seen = env.state.setdefault("seen", [])

        def after(request):
            active = model.active_adapter
            seen.append(active[0] if isinstance(active, list) else active)

        return after

    def extras(self, env, timing, state):
        names = [a["name"] for a in env.artifacts]
        asked = [r.adapter for r in timing.requests]
        prev = state.get("active_before_timing")
        switched = []
        for a in asked:
            switched.append(int(a != prev))
            prev = a
        lat = np.asarray(timing.latencies_ns, dtype=np.float64) / 1e6
        flags = np.asarray(switched, dtype=bool)
        seen = state.get("seen", [])
        return {
            "k": len(names),
            "adapters": names,
            "interleave": env.settings["interleave"],
            "active_before_timing": state.get("active_before_timing"),
            "request_adapters": [names.index(a) for a in asked],
            "active_adapters_seen": sorted(set(seen)),
            "active_matches_request": seen == asked,
            "switched": switched,
            "switches": int(flags.sum()),
            "switch_share": float(flags.mean()) if flags.size else 0.0,
            "p50_ms_with_switch": float(np.median(lat[flags])) if flags.any() else None,
            "p50_ms_without_switch": float(np.median(lat[~flags])) if (~flags).any() else None,
        }
