"""Sweeps: a grid over a method's settings, expanded at study load into one method entry per cell.

    methods:
      lora: {type: lora, alpha: 16, training: {learning_rate: 3.0e-4}}
    sweep:
      lora:
        r: [2, 8, 32]
        target_modules: {qv: [query, value], all: all-linear}   # labelled values
        learning_rate: [1.0e-4, 3.0e-4]                          # training.learning_rate

expands `lora` into 3 x 2 x 2 = 12 entries named `lora-r2-qv-lr1e-4`, ..., in the order the keys
and values are given (the first key varies slowest). Each cell is an ordinary method entry: its
own run ids (the id hashes its parameters), its own search and seeds; `overrides[j].methods` and
`search` settings that name the swept method apply to every cell. A key is a method parameter
(`r`, `target_modules`, `init`, any keyword; a dotted path such as `params.r` reaches into
`type: peft`'s keyword arguments), `learning_rate`, or `training.<key>`.

A cell's name is `<method>-<segment>...`, one segment per key: the label where the values are a
mapping, else the value written short (`r8`, `lr3e-4`, `alpha32`; a list of module names by their
initials, `[query, value]` -> `qv`; strings as they are, `init: pissa` -> `pissa`).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from peftlab.errors import SpecError
from peftlab.spec import StudySpec

# How a key's values are written in a cell name: a prefix, or "" (the value alone).
PREFIX = {"r": "r", "alpha": "alpha", "learning_rate": "lr", "dropout": "drop",
          "target_modules": "", "init": "", "config": ""}


def _number(v: float) -> str:
    """3.0e-4 -> '3e-4', 0.05 -> '0.05', 16.0 -> '16'."""
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:g}"
    mantissa, exp = f"{v:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def value_label(value: Any) -> str:
    """A value written short for a cell name (see the module docstring)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return _number(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "".join(v.split(".")[-1][:1] for v in value)
    raise ValueError(f"no short form for {value!r}")


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", text.replace(".", "p")).strip("_")


def _segment(key: str, label: str) -> str:
    leaf = key.split(".")[-1]
    prefix = PREFIX.get(leaf, leaf) if key != "training.learning_rate" else "lr"
    return _clean(f"{prefix}{label}")


def merged(base: Any, layer: Any) -> Any:
    """`layer` over `base`: mappings merge key by key (recursively), anything else replaces.
    So a cell or override `params: {r: 16}` of a `type: peft` entry changes `r` and keeps the
    entry's other keywords (target_modules, alpha, ...)."""
    if isinstance(base, dict) and isinstance(layer, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in layer.items()}}
    return layer


def _set(entry: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nested = entry.get(part)
        entry[part] = dict(nested) if isinstance(nested, dict) else {}
        entry = entry[part]
    entry[path[-1]] = merged(entry.get(path[-1]), value)


def cells(name: str, template: dict[str, Any], grid: dict[str, Any], where: str
          ) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """{cell name: (its method entry, {key: label})} of one method's grid, in grid order.

    SpecError naming `where.<key>` for a grid that cannot expand (no values, values without a
    short form and no labels, two cells of one name)."""
    if not grid:
        raise SpecError(f"{where}: give at least one key to sweep (e.g. r: [4, 8])")
    axes = []
    for key, values in grid.items():
        path = ["training", "learning_rate"] if key == "learning_rate" else key.split(".")
        if not all(path):
            raise SpecError(f"{where}.{key}: not a key path")
        if isinstance(values, dict):
            labelled = [(str(label), v) for label, v in values.items()]
        elif isinstance(values, list):
            try:
                labelled = [(value_label(v), v) for v in values]
            except ValueError as err:
                raise SpecError(f"{where}.{key}: {err}; give the values as a mapping "
                                "{label: value}") from None
        else:
            raise SpecError(f"{where}.{key}: expected a list of values or a mapping {{label: "
                            f"value}}, got {values!r}")
        if not labelled:
            raise SpecError(f"{where}.{key}: give at least one value")
        if path[0] == "type":
            raise SpecError(f"{where}.{key}: the method type is not swept; write one method "
                            "entry per type")
        axes.append((key, path, labelled))
    out: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    for combo in itertools.product(*(labelled for _, _, labelled in axes)):
        entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in template.items()}
        labels = {}
        segments = [name]
        for (key, path, _), (label, value) in zip(axes, combo, strict=True):
            _set(entry, path, value)
            labels[key] = label
            segments.append(_segment(key, label))
        cell = "-".join(s for s in segments if s)
        if cell in out:
            raise SpecError(f"{where}: two cells are both named {cell!r}; give the values of a "
                            "key as a mapping {label: value} with distinct labels")
        out[cell] = (entry, labels)
    return out


def expand_sweep(spec: StudySpec, where: str) -> StudySpec:
    """`spec` with every swept method replaced, at its place in `methods`, by its cells; method
    names in `overrides` and `search` that name a swept method name its cells instead.
    SpecError naming the sweep key (`where`: the spec file)."""
    if not spec.sweep:
        return spec
    from peftlab.methods import get_method

    expanded: dict[str, list[str]] = {}
    methods: dict[str, dict[str, Any]] = {}
    for name in spec.sweep:
        if name not in spec.methods:
            raise SpecError(f"{where}: sweep.{name}: not a method of `methods` (the entry a "
                            f"sweep varies); methods are {sorted(spec.methods)}")
    for name, entry in spec.methods.items():
        if name not in spec.sweep:
            methods[name] = entry
            continue
        grid = cells(name, entry, spec.sweep[name], f"{where}: sweep.{name}")
        expanded[name] = list(grid)
        for cell, (cell_entry, _labels) in grid.items():
            if cell in spec.methods or cell in methods:
                raise SpecError(f"{where}: sweep.{name}: cell {cell!r} has the name of another "
                                "method entry; rename that entry")
            # each cell's parameters are checked here, so an error names the sweep
            params = {k: v for k, v in cell_entry.items() if k not in ("type", "training")}
            get_method(cell_entry.get("type"), where=f"{where}: methods.{name}.type"
                       ).validate_params(params, where=f"{where}: sweep.{name} (cell {cell})")
            methods[cell] = cell_entry

    def names(listed: list[str] | None) -> list[str] | None:
        if listed is None:
            return None
        return [c for m in listed for c in expanded.get(m, [m])]

    update: dict[str, Any] = {"methods": methods,
                              "overrides": [o.model_copy(update={"methods": names(o.methods)})
                                            for o in spec.overrides]}
    if spec.search is not None:
        s = spec.search
        update["search"] = s.model_copy(update={
            "methods": {c: space for m, space in s.methods.items()
                        for c in expanded.get(m, [m])},
            "overrides": [o.model_copy(update={"methods": names(o.methods)})
                          for o in s.overrides]})
    return spec.model_copy(update=update)


def sweep_cells(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """{cell name: {"method": the swept method, "values": {key: label}}} of an expanded spec
    (for reports: which cell holds which swept values)."""
    out = {}
    for name, grid in spec.sweep.items():
        template = {"type": None}  # the names do not depend on the template's contents
        for cell, (_, labels) in cells(name, template, grid, f"sweep.{name}").items():
            out[cell] = {"method": name, "values": labels}
    return out
