"""The unmerged fast path: LoRA adapters served live (not merged) without PEFT's per-call dispatch.

    served = loader.adapters([a, b], seed)        # a PeftModel, k LoRA adapters, first active
    fast = fused_lora(served)                     # the same weights, 2 kernels per adapted linear
    logits = fast(**inputs).logits
    fast.set_adapter(b["name"])                   # hot swap: in-place copies, no new tensors
    fast = fused_lora(served, compile=True)       # ... and torch.compile'd (swaps never recompile)

    hot = compiled_hotswap(loader.adapters([a, b], seed))   # PEFT's own compiled hot-swap path

Both return a `SwappableModel`: call it like the model, `set_adapter(name)` switches adapters (what
the `multi` mode and the server do per request/batch), `compile_ms` records what compilation cost
(kept apart from serving latency), `get_base_model()` gives the transformers model inside (its head
is a plain module, so `loading.served_head` reads the head actually computed with).

Why: served unmerged, a LoRA adapter adds little compute (two rank-r products per layer), but
PEFT's `lora.Linear.forward` does Python and dispatch work around it in every adapted layer on
every call: argument checks, a loop over the adapter ModuleDicts, three extra module calls
(dropout, an `nn.Dropout` even in eval; lora_A; lora_B), the scaling multiply, the add and a
dtype cast. That cost is fixed per forward and grows with the number of adapted layers, not with
the batch, so it weighs most at small batches and when the GEMMs are fast (more threads, a GPU).
benchmarks/unmerged_fastpath.py measures it: module calls and ATen ops per forward, latency
against the merged model, and ablations (dropout replaced by the identity, PEFT's dispatch
replaced by a plain 3-matmul module) that show which part of the overhead each step removes.

`FusedLoraLinear` does the same arithmetic in 1 module call and 2 GEMMs:

    h = x [W; A]^T + [b; 0]                one addmm: base output and x A^T side by side [T, out + r]
    y = h[:, :out] + h[:, out:] (s B)^T    one addmm: the rank-r update added in the same kernel

so the adapter's extra cost is one small addmm per layer and r extra rows in the base GEMM. It is
exact up to float rounding (the same products summed in another order; the gate checks it against
PEFT unmerged and merged). Dropout is skipped: serving is in eval mode, where PEFT's dropout is the
identity. Adapters of different ranks are zero-padded to the largest rank (as
`prepare_model_for_compiled_hotswap` does), which changes no output and keeps every shape fixed, so
a swap is an in-place copy and a compiled graph stays valid.

Supported: PEFT LoRA (and rsLoRA, any init) on `nn.Linear` layers, no DoRA, no LoRA bias, heads in
`modules_to_save`. Anything else raises `FastPathUnsupported` naming the module.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from peftlab.errors import PeftlabError


class FastPathUnsupported(PeftlabError):
    """This model cannot be served by the fast path (e.g. DoRA, Conv1D base layers)."""


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------------------------------------
# One adapted linear layer


def _make_fused_linear_class():
    torch = _torch()
    from torch import nn

    class FusedLoraLinear(nn.Module):
        """A LoRA-adapted linear layer as 2 kernels: y = x W^T + b + (x A^T)(s B)^T.

        weight_t: [in, out + r] = [W; A_active]^T, stored transposed so each call is one
        `addmm` with no transpose op; bias: [out + r] = [b; 0] (b = 0 if the base has none);
        up: [r, out] = (s B_active)^T. bank_A[name]: [r, in], bank_up[name]: [r, out] hold every
        adapter's (zero-padded) factors; `use(name)` copies one into weight_t/up in place.
        Inference only (no gradient, dropout skipped: PEFT's dropout is the identity in eval).
        """

        def __init__(self, base: nn.Linear, factors: dict[str, tuple[Any, Any, float]],
                     rank: int, active: str):
            super().__init__()
            out_f, in_f = base.weight.shape
            self.in_features, self.out_features, self.rank = in_f, out_f, rank
            w = base.weight.detach()
            dtype, device = w.dtype, w.device
            weight_t = torch.zeros(in_f, out_f + rank, dtype=dtype, device=device)
            weight_t[:, :out_f] = w.t()
            bias = torch.zeros(out_f + rank, dtype=dtype, device=device)
            if base.bias is not None:
                bias[:out_f] = base.bias.detach()
            self.weight_t = nn.Parameter(weight_t, requires_grad=False)
            self.bias = nn.Parameter(bias, requires_grad=False)
            self.up = nn.Parameter(torch.zeros(rank, out_f, dtype=dtype, device=device),
                                   requires_grad=False)
            self.bank_A = nn.ParameterDict()
            self.bank_up = nn.ParameterDict()
            for name, (a, b, scaling) in factors.items():
                r = a.shape[0]
                pad_a = torch.zeros(rank, in_f, dtype=dtype, device=device)
                pad_a[:r] = a.detach().to(dtype)
                pad_up = torch.zeros(rank, out_f, dtype=dtype, device=device)
                # (s B)^T: the scaling folded into the up-projection once, not multiplied per call
                pad_up[:r] = (b.detach().to(torch.float32) * float(scaling)).t().to(dtype)
                self.bank_A[name] = nn.Parameter(pad_a, requires_grad=False)
                self.bank_up[name] = nn.Parameter(pad_up, requires_grad=False)
            self.use(active)

        @torch.no_grad()
        def use(self, name: str) -> None:
            self.weight_t[:, self.out_features:].copy_(self.bank_A[name].t())
            self.up.copy_(self.bank_up[name])

        def forward(self, x):
            out_f = self.out_features
            h = torch.addmm(self.bias, x.reshape(-1, self.in_features), self.weight_t)
            y = torch.addmm(h[:, :out_f], h[:, out_f:], self.up)
            return y.view(*x.shape[:-1], out_f)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"rank={self.rank}, adapters={list(self.bank_A)}")

    return FusedLoraLinear


_CLASSES: dict[str, Any] = {}


def fused_linear_class():
    """The `FusedLoraLinear` nn.Module class (built on first use: torch imported lazily)."""
    if "fused" not in _CLASSES:
        _CLASSES["fused"] = _make_fused_linear_class()
    return _CLASSES["fused"]


# ---------------------------------------------------------------------------------------------
# The served model


class SwappableModel:
    """A served model with k adapters of which one is live; `set_adapter` switches in place.

    model: the transformers model computed with (adapters fused or PEFT-prepared); forward: what a
    call runs (the model, or its torch.compile'd version). Attributes the benchmark reads:
    adapters (names), active_adapter, switches (set_adapter calls that changed the adapter),
    swap_ms (the time of each of those, ms), compile_ms (time of the calls that compiled, ms;
    None when not compiled), variant ("fused", "fused+compile", "hotswap+compile").
    """

    def __init__(self, model: Any, adapters: list[str], *, variant: str, swap: Any,
                 inner: Any = None, compiled: bool = False,
                 compile_options: dict[str, Any] | None = None):
        self.model = model            # what forward runs (a transformers model or a PeftModel)
        self.inner = inner if inner is not None else model  # the transformers model
        self.adapters = list(adapters)
        self.active_adapter = self.adapters[0]
        self.variant = variant
        self.compiled = compiled
        self.compile_ms: float | None = None
        self.switches = 0
        self.swap_ms: list[float] = []
        self._swap = swap
        self.forward = model
        if compiled:
            # dynamic=None: the first shape is compiled static, a second sequence length makes
            # dynamo recompile once with symbolic sizes, after which lengths reuse that graph
            self.compile_options = {"dynamic": None, **(compile_options or {})}
            self.forward = _torch().compile(model, **self.compile_options)

    # the model interface the bench modes use ------------------------------------------------
    def __call__(self, **inputs: Any) -> Any:
        return self.forward(**inputs)

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def get_base_model(self) -> Any:
        return self.inner

    def eval(self) -> SwappableModel:
        self.inner.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    def buffers(self):
        return self.model.buffers()

    @property
    def dtype(self) -> Any:
        return self.inner.dtype

    def set_adapter(self, name: str, inference_mode: bool = True) -> None:
        """Make `name` the live adapter (in-place copies; a compiled graph stays valid)."""
        if name not in self.adapters:
            raise FastPathUnsupported(f"adapter {name!r} is not loaded; loaded: {self.adapters}")
        if name == self.active_adapter:
            return
        t0 = time.perf_counter_ns()
        self._swap(name)
        self.swap_ms.append((time.perf_counter_ns() - t0) / 1e6)
        self.active_adapter = name
        self.switches += 1

    def warm_up(self, requests: list[dict[str, Any]]) -> float:
        """Run each request's inputs once (compiling each new shape); returns the time in ms.

        Called before timing so compilation never lands inside a timed request; the time is
        stored as `compile_ms` when compiled.
        """
        torch = _torch()
        t0 = time.perf_counter_ns()
        with torch.inference_mode():
            for inputs in requests:
                self(**inputs)
        ms = (time.perf_counter_ns() - t0) / 1e6
        if self.compiled:
            self.compile_ms = (self.compile_ms or 0.0) + ms
        return ms


def _lora_layers(peft_model: Any) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def _check_lora(peft_model: Any) -> list[str]:
    """Adapter names of a PeftModel the fast path can serve; FastPathUnsupported otherwise."""
    from peft.tuners.lora import Linear as LoraLinear
    from torch import nn

    configs = getattr(peft_model, "peft_config", None)
    if not configs:
        raise FastPathUnsupported("the fast path serves a PeftModel with LoRA adapters; got "
                                  f"{type(peft_model).__name__}")
    names = list(configs)
    for name, cfg in configs.items():
        kind = getattr(getattr(cfg, "peft_type", None), "value", None)
        if kind != "LORA":
            raise FastPathUnsupported(f"adapter {name!r} is {kind}, the fast path serves LoRA only")
    layers = _lora_layers(peft_model)
    if not layers:
        raise FastPathUnsupported("the model holds no LoRA layer")
    for path, m in layers:
        if type(m) is not LoraLinear or not isinstance(m.get_base_layer(), nn.Linear):
            raise FastPathUnsupported(f"{path}: a {type(m).__name__} LoRA layer on "
                                      f"{type(m.get_base_layer()).__name__}; the fast path "
                                      "fuses LoRA on nn.Linear only")
        if getattr(m, "fan_in_fan_out", False):
            raise FastPathUnsupported(f"{path}: fan_in_fan_out layers are not supported")
        if m.merged_adapters:
            raise FastPathUnsupported(f"{path}: adapters {m.merged_adapters} are merged")
        for name in names:
            if name in getattr(m, "lora_variant", {}):
                raise FastPathUnsupported(f"{path}: adapter {name!r} is a LoRA variant "
                                          f"({type(m.lora_variant[name]).__name__}, e.g. DoRA)")
            if getattr(m, "lora_bias", {}).get(name, False):
                raise FastPathUnsupported(f"{path}: adapter {name!r} has a LoRA bias")
    return names


def _set_child(root: Any, path: str, module: Any) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _head_banks(model: Any, names: list[str], active: str) -> tuple[list[tuple[str, Any]], Any]:
    """Replace every ModulesToSaveWrapper under `model` by a copy of `active`'s module.

    Returns ([(path, live module)], bank): bank[name][path] = {param: tensor} for each adapter,
    what `swap_heads` copies into the live modules.
    """
    from peft.utils.other import ModulesToSaveWrapper

    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    live, bank = [], {name: {} for name in names}
    for path, w in wrappers:
        for name in names:
            if name not in w.modules_to_save:
                raise FastPathUnsupported(f"{path}: adapter {name!r} has no copy of this module "
                                          "(modules_to_save differs between adapters)")
            bank[name][path] = {k: v.detach().clone()
                                for k, v in w.modules_to_save[name].named_parameters()}
        module = copy.deepcopy(w.modules_to_save[active])
        module.requires_grad_(False)
        _set_child(model, path, module)
        live.append((path, module))
    return live, bank


def _swap_heads(live: list[tuple[str, Any]], bank: dict[str, Any], name: str) -> None:
    torch = _torch()
    with torch.no_grad():
        for path, module in live:
            for k, p in module.named_parameters():
                p.copy_(bank[name][path][k])


def fused_lora(peft_model: Any, *, compile: bool = False,
               compile_options: dict[str, Any] | None = None) -> SwappableModel:
    """The fast path of a loaded PeftModel (all its LoRA adapters; the active one live).

    The PeftModel is consumed: its transformers model is rewritten in place (each LoRA layer
    becomes a `FusedLoraLinear`, each `modules_to_save` head a plain module) and returned inside
    a `SwappableModel`. compile: torch.compile the result (swaps copy in place: no recompile);
    compile_options: keyword arguments of torch.compile (mode, backend, dynamic).
    """
    names = _check_lora(peft_model)
    active = peft_model.active_adapter
    active = active[0] if isinstance(active, list) else active
    order = [active] + [n for n in names if n != active]
    inner = peft_model.get_base_model()
    fused_cls = fused_linear_class()
    fused = []
    for path, m in _lora_layers(inner):
        factors = {n: (m.lora_A[n].weight, m.lora_B[n].weight, m.scaling[n])
                   for n in order if n in m.lora_A}
        missing = [n for n in order if n not in factors]
        if missing:
            # an adapter that does not adapt this layer contributes zero here
            base = m.get_base_layer()
            for n in missing:
                z = base.weight.new_zeros(1, base.in_features)
                factors[n] = (z, base.weight.new_zeros(base.out_features, 1), 0.0)
        rank = max(a.shape[0] for a, _, _ in factors.values())
        layer = fused_cls(m.get_base_layer(), factors, rank, active)
        _set_child(inner, path, layer)
        fused.append(layer)
    live, bank = _head_banks(inner, order, active)
    inner.eval()

    def swap(name: str) -> None:
        for layer in fused:
            layer.use(name)
        _swap_heads(live, bank, name)

    return SwappableModel(inner, order, variant="fused+compile" if compile else "fused",
                          swap=swap, compiled=compile, compile_options=compile_options)


def compiled_hotswap(peft_model: Any, *,
                     compile_options: dict[str, Any] | None = None) -> SwappableModel:
    """PEFT's compiled hot-swap path: one adapter slot, prepared, compiled, swapped in place.

    The first (active) adapter of `peft_model` keeps its slot; every other adapter's weights are
    read into memory (`get_peft_model_state_dict`) and deleted from the model.
    `prepare_model_for_compiled_hotswap` pads every LoRA layer to the largest rank and turns the
    scalings into tensors, then the PeftModel is torch.compile'd; `set_adapter(name)` runs
    `hotswap_adapter_from_state_dict` (an in-place copy, so no recompilation) and copies the
    adapter's head into the live head (PEFT's hot swap covers LoRA weights only).
    """
    from peft.utils.hotswap import (
        check_hotswap_configs_compatible,
        hotswap_adapter_from_state_dict,
        prepare_model_for_compiled_hotswap,
    )
    from peft.utils.save_and_load import (
        _insert_adapter_name_into_state_dict,
        get_peft_model_state_dict,
    )

    names = _check_lora(peft_model)
    slot = peft_model.active_adapter
    slot = slot[0] if isinstance(slot, list) else slot
    order = [slot] + [n for n in names if n != slot]
    configs = {n: copy.deepcopy(peft_model.peft_config[n]) for n in order}
    for n in order[1:]:
        check_hotswap_configs_compatible(configs[slot], configs[n])
    inner = peft_model.get_base_model()
    live, bank = _head_banks(inner, order, slot)
    states = {}
    for n in order:
        sd = get_peft_model_state_dict(peft_model, adapter_name=n)
        lora = {k: v.detach().clone() for k, v in sd.items() if "lora_" in k}
        states[n] = _insert_adapter_name_into_state_dict(lora, adapter_name=slot,
                                                         parameter_prefix="lora_")
    for n in order[1:]:
        peft_model.delete_adapter(n)
    ranks = [int(r) for c in configs.values()
             for r in [c.r, *(c.rank_pattern or {}).values()]]
    prepare_model_for_compiled_hotswap(peft_model, target_rank=max(ranks),
                                       config=peft_model.peft_config)
    peft_model.eval()

    def swap(name: str) -> None:
        hotswap_adapter_from_state_dict(peft_model, states[name], adapter_name=slot,
                                        config=configs[name], parameter_prefix="lora_")
        _swap_heads(live, bank, name)

    return SwappableModel(peft_model, order, variant="hotswap+compile", swap=swap, inner=inner,
                          compiled=True, compile_options=compile_options)


VARIANTS = {
    "fused": lambda m: fused_lora(m),
    "fused+compile": lambda m: fused_lora(m, compile=True),
    "hotswap+compile": compiled_hotswap,
}


def fast_model(peft_model: Any, variant: str = "fused") -> SwappableModel:
    """The fast path `variant` ("fused", "fused+compile", "hotswap+compile") of a PeftModel."""
    if variant not in VARIANTS:
        raise PeftlabError(f"unknown fast-path variant {variant!r}; expected one of "
                           f"{sorted(VARIANTS)}")
    return VARIANTS[variant](peft_model)
