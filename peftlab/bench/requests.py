"""Requests for the timing loop: real evaluation examples, tokenised and batched before any timing.

    batches = build_batches(encoded["sst2"], tokenizer, batch_size=8, seq_len="data", ...)
    stream = CycleStream(batches)                          # one task, one model
    stream = InterleavedStream({"a": batches_a, "b": batches_b}, interleave="random", seed=0)

A request is one forward call: a batch of `rows` examples already padded and on the device.
seq_len "data": each batch is padded to its longest example (dynamic padding, what a server does);
an int: every example is truncated or padded to exactly that many tokens (fixed shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftlab.errors import PeftlabError

MAX_BATCHES = 64  # distinct prebuilt batches per (task, batch size, length): bounds device memory


@dataclass
class Request:
    """One forward call.

    inputs: input_ids / attention_mask (/ token_type_ids) tensors [rows, seq] on the device;
    adapter: the adapter this batch is for (multi-adapter serving), else None;
    adapter_names: one adapter per row (mixed-adapter batches), else None;
    rows: examples in the batch; tokens: non-padding tokens; padded_tokens: rows * seq.
    """

    inputs: dict[str, Any]
    rows: int
    tokens: int
    padded_tokens: int
    adapter: str | None = None
    adapter_names: list[str] | None = None


def example_order(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n): requests do not arrive in file order."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def build_batches(encoded: Any, tokenizer: Any, *, batch_size: int, seq_len: int | str,
                  device: str, seed: int, adapter: str | None = None) -> list[Request]:
    """Cut the encoded examples (a `datasets.Dataset` from `encode_frame`) into request batches.

    Examples are taken in a seeded order and cycled, so every batch holds exactly `batch_size`
    examples even when the task has fewer; at most `MAX_BATCHES` distinct batches are built
    (ceil(n / batch_size) when fewer). Fixed lengths re-truncate each example to `seq_len`.
    """
    from peftlab.encode import make_collator

    n = len(encoded)
    if n == 0:
        raise PeftlabError("no evaluation examples to build requests from")
    order = example_order(n, seed)
    n_batches = min(MAX_BATCHES, max(1, math.ceil(n / batch_size)))
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in
            encoded.column_names]
    collator = make_collator(tokenizer, pad_to=None if seq_len == "data" else int(seq_len))
    rows = encoded[:]  # one columnar read, not one per example
    batches = []
    for b in range(n_batches):
        idx = [order[(b * batch_size + i) % n] for i in range(batch_size)]
        feats = [{c: rows[c][i] for c in cols} for i in idx]
        batches.append(collate(collator, feats, seq_len, device, adapter=adapter))
    return batches


def collate(collator: Any, feats: list[dict[str, Any]], seq_len: int | str, device: str,
            **who: Any) -> Request:
    """One request from tokenised rows: truncated to `seq_len` here (the collator pads up to
    it) unless "data", collated, moved to `device`; `who` names the adapter(s) it is for."""
    if seq_len != "data":
        feats = [{c: v[: int(seq_len)] for c, v in f.items()} for f in feats]
    inputs = {k: v.to(device) for k, v in collator(feats).items() if k != "labels"}
    mask = inputs["attention_mask"]
    return Request(inputs=inputs, rows=len(feats), tokens=int(mask.sum()),
                   padded_tokens=int(mask.numel()), **who)


def ordered_batches(encoded: Any, tokenizer: Any, *, batch_size: int, device: str,
                    adapter: str | None = None) -> list[Request]:
    """Every encoded example once, in dataset order, in batches of `batch_size` (the last may be
    smaller), dynamically padded; each row for `adapter` (set as `adapter` and, per row, as
    `adapter_names`, so any mode's call routes it). For checks against stored logits, which
    are in dataset order."""
    from peftlab.encode import make_collator

    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in
            encoded.column_names]
    collator = make_collator(tokenizer, pad_to=None)
    rows = encoded[:]
    out = []
    for start in range(0, len(encoded), batch_size):
        idx = range(start, min(start + batch_size, len(encoded)))
        out.append(collate(collator, [{c: rows[c][i] for c in cols} for i in idx], "data",
                           device, adapter=adapter,
                           adapter_names=[adapter] * len(idx) if adapter else None))
    return out


class CycleStream:
    """Requests for one model: the prebuilt batches in order, over and over."""

    def __init__(self, batches: list[Request]):
        self.batches = batches
        self.i = 0
        self._index = {id(r): i for i, r in enumerate(batches)}

    def position(self, request: Request) -> int:
        """Which prebuilt batch `request` is (0-based): the same index in two streams built
        with the same seed is the same examples, so latencies compare at the same lengths."""
        return self._index[id(request)]

    def next(self) -> Request:
        r = self.batches[self.i % len(self.batches)]
        self.i += 1
        return r

    def longest(self) -> Request:
        return max(self.batches, key=lambda r: r.padded_tokens)

    def distinct(self) -> list[Request]:
        return list(self.batches)


def adapter_sequence(k: int, interleave: str, rng: np.random.Generator, n: int,
                     start: int = 0) -> list[int]:
    """n adapter indices in [0, k): "round_robin" cycles 0..k-1 from `start`; "random" draws
    uniformly with `rng` (so consecutive requests often need an adapter switch)."""
    if interleave == "round_robin":
        return [(start + i) % k for i in range(n)]
    if interleave == "random":
        return [int(x) for x in rng.integers(0, k, size=n)]
    raise PeftlabError(f"interleave must be 'random' or 'round_robin', got {interleave!r}")


class InterleavedStream:
    """Requests for several adapters, one adapter per request, interleaved as a server sees them.

    per_adapter: adapter name -> its prebuilt batches (each Request has `adapter` set). The
    adapter of each request follows `interleave` (seeded), so switches happen in the timed stream.
    """

    def __init__(self, per_adapter: dict[str, list[Request]], *, interleave: str, seed: int):
        self.names = list(per_adapter)
        self.per_adapter = per_adapter
        self.interleave = interleave
        self.rng = np.random.default_rng(seed)
        self.cursor = dict.fromkeys(self.names, 0)
        self.i = 0
        adapter_sequence(len(self.names), interleave, self.rng, 0)  # validates `interleave`
        self._index = {id(r): i for bs in per_adapter.values() for i, r in enumerate(bs)}

    def position(self, request: Request) -> int:
        """Which of its adapter's prebuilt batches `request` is (see `CycleStream.position`)."""
        return self._index[id(request)]

    def next(self) -> Request:
        k = len(self.names)
        a = adapter_sequence(k, self.interleave, self.rng, 1, start=self.i)[0]
        self.i += 1
        name = self.names[a]
        batches = self.per_adapter[name]
        r = batches[self.cursor[name] % len(batches)]
        self.cursor[name] += 1
        return r

    def longest(self) -> Request:
        return max(self.distinct(), key=lambda r: r.padded_tokens)

    def distinct(self) -> list[Request]:
        return [r for bs in self.per_adapter.values() for r in bs]


def build_mixed_batches(encoded: dict[str, Any], tokenizer: Any, *, batch_size: int,
                        seq_len: int | str, device: str, seed: int, interleave: str
                        ) -> list[Request]:
    """Batches whose rows belong to different adapters (PEFT's `adapter_names=[...]`).

    encoded: adapter name -> its task's encoded examples. Row j of the stream goes to the adapter
    `adapter_sequence` picks (round-robin or seeded random); each adapter's examples are taken in
    a seeded order and cycled. Batches of one adapter-mix are padded together.
    """
    from peftlab.encode import make_collator

    names = list(encoded)
    rng = np.random.default_rng(seed)
    orders = {a: example_order(len(encoded[a]), seed + i) for i, a in enumerate(names)}
    columns = {a: encoded[a][:] for a in names}
    cursor = dict.fromkeys(names, 0)
    total = sum(len(encoded[a]) for a in names)
    n_batches = min(MAX_BATCHES, max(1, math.ceil(total / batch_size)))
    collator = make_collator(tokenizer, pad_to=None if seq_len == "data" else int(seq_len))
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids")
            if c in encoded[names[0]].column_names]
    seq = adapter_sequence(len(names), interleave, rng, n_batches * batch_size)
    batches = []
    for b in range(n_batches):
        feats, row_adapters = [], []
        for a_idx in seq[b * batch_size:(b + 1) * batch_size]:
            a = names[a_idx]
            i = orders[a][cursor[a] % len(orders[a])]
            cursor[a] += 1
            feats.append({c: columns[a][c][i] for c in cols})
            row_adapters.append(a)
        batches.append(collate(collator, feats, seq_len, device, adapter_names=row_adapters))
    return batches
