"""What a bench mode works with inside a unit's worker process (`WorkerEnv`).

    env = WorkerEnv(job)                     # job: the unit's JSON (peftlab.bench.runner)
    requests = env.batches("sst2", batch_size=8, seq_len="data", seed=0)

The worker (`peftlab.bench.worker`) builds one per unit and hands it to the mode's hooks
(`peftlab.bench.mode.Mode`): the model loader and device, the tasks' evaluation examples tokenised
once, request batches on the device, and the gate's comparisons at the serving dtype's tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from peftlab.artifacts import ModelLoader
from peftlab.bench.gate import compare_head, compare_logits
from peftlab.bench.loading import head_names_of, release_memory
from peftlab.bench.requests import Request, build_batches, build_mixed_batches

GATE_BATCH = 8  # examples per gate forward pass


class WorkerEnv:
    """What a mode works with inside the worker: loader, tasks, requests, gate helpers."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        self.settings = job["settings"]
        self.device = job["device"]
        self.seed = int(self.settings["seed"])
        self.artifacts: list[dict[str, Any]] = job["artifacts"]
        self.tasks_served: list[str] = job["tasks_served"]
        self.loader = ModelLoader(job["model"], self.device)
        self.dtype = self.loader.dtype
        self.tolerance = float(self.settings["gate_tolerance"][self.dtype])
        self.state: dict[str, Any] = {}  # serving state shared by a mode's call and its figures
        self._encoded: dict[tuple[str, int, bool], Any] = {}

    # -- data ------------------------------------------------------------------------------------
    def task_info(self, task: str) -> dict[str, Any]:
        return self.job["tasks"][task]

    def encoded(self, task: str, max_length: int, gate: bool = False) -> Any:
        """The task's evaluation examples tokenised once (truncated to max_length, unpadded)."""
        import pandas as pd

        from peftlab.encode import encode_frame

        key = (task, max_length, gate)
        if key not in self._encoded:
            info = self.task_info(task)
            df = pd.DataFrame(info["rows"])
            if gate:
                df = df.iloc[: int(self.settings["gate_examples"])]
            self._encoded[key] = encode_frame(
                df, self.loader.tokenizer, max_length=max_length,
                pair_template=self.job["model"].get("pair_template", "{a}\n{b}"),
                label_dtype=info["label_dtype"])
        return self._encoded[key]

    def _length(self, seq_len: int | str) -> int:
        return int(self.job["model"].get("max_length", 128)) if seq_len == "data" else int(seq_len)

    def batches(self, task: str, batch_size: int, seq_len: int | str, seed: int,
                adapter: str | None = None) -> list[Request]:
        return build_batches(self.encoded(task, self._length(seq_len)), self.loader.tokenizer,
                             batch_size=batch_size, seq_len=seq_len, device=self.device,
                             seed=seed, adapter=adapter)

    def mixed_batches(self, batch_size: int, seq_len: int | str, seed: int,
                      gate: bool = False, interleave: str | None = None) -> list[Request]:
        encoded = {a["name"]: self.encoded(a["task"], self._length(seq_len), gate)
                   for a in self.artifacts}
        return build_mixed_batches(encoded, self.loader.tokenizer, batch_size=batch_size,
                                   seq_len=seq_len, device=self.device, seed=seed,
                                   interleave=interleave or self.settings["interleave"])

    # -- gate helpers ----------------------------------------------------------------------------
    def gate_requests(self, task: str, adapter: str | None = None) -> list[Request]:
        """The gate examples of `task` (the first `gate_examples` evaluation rows), batched."""
        enc = self.encoded(task, self._length("data"), gate=True)
        return build_batches(enc, self.loader.tokenizer, batch_size=min(GATE_BATCH, len(enc)),
                             seq_len="data", device=self.device, seed=self.seed, adapter=adapter)

    def mixed_gate_requests(self) -> list[Request]:
        n = min(GATE_BATCH, sum(len(self.encoded(a["task"], self._length("data"), True))
                                for a in self.artifacts))
        return self.mixed_batches(n, "data", self.seed, gate=True, interleave="round_robin")

    @staticmethod
    def logits(call: Any, requests: list[Request]) -> np.ndarray:
        """Logits of every request, concatenated: float32 [rows, num_labels]."""
        with torch.inference_mode():
            return np.concatenate([call(r).logits.float().cpu().numpy() for r in requests])

    @staticmethod
    def plain_call(model: Any) -> Any:
        return lambda request: model(**request.inputs)

    def compare(self, name: str, served: np.ndarray, ref_name: str, ref: np.ndarray) -> dict:
        return compare_logits(name, served, ref_name, ref, tolerance=self.tolerance)

    def compare_head(self, name: str, served: dict, stored: dict) -> dict:
        return compare_head(name, served, stored, tolerance=self.tolerance)

    @staticmethod
    def head_names(model: Any) -> list[str]:
        return head_names_of(model)

    def release(self) -> None:
        release_memory(self.device)

    @staticmethod
    def reseed(seed: int) -> None:
        from transformers import set_seed

        set_seed(seed)
