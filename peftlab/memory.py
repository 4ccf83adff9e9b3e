"""Peak memory of a block of work: device peak on CUDA, process peak RSS on CPU; and the bytes a
model's tensors hold (`param_bytes`).

`resource.getrusage` gives the process's lifetime peak RSS, which cannot be reset between runs of
one process, so on CPU a sampling thread records the peak RSS seen while the block runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class PeakMemory:
    """with PeakMemory(device) as mem: ...  then mem.as_dict() (bytes)."""

    device: str = "cpu"
    interval_s: float = 0.02
    rss_start: int = 0
    rss_peak: int = 0
    cuda_peak_allocated: int | None = None
    cuda_peak_reserved: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        proc = psutil.Process()
        self.rss_start = self.rss_peak = proc.memory_info().rss
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.rss_peak = max(self.rss_peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.rss_peak = max(self.rss_peak, psutil.Process().memory_info().rss)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_allocated = torch.cuda.max_memory_allocated()
            self.cuda_peak_reserved = torch.cuda.max_memory_reserved()

    def as_dict(self) -> dict[str, int | None]:
        return {
            "rss_peak_bytes": self.rss_peak,
            "rss_start_bytes": self.rss_start,
            "cuda_peak_allocated_bytes": self.cuda_peak_allocated,
            "cuda_peak_reserved_bytes": self.cuda_peak_reserved,
        }


def param_bytes(*models: Any) -> int:
    """Bytes of the models' parameters and buffers in memory (tensors shared within or between
    models counted once)."""
    seen, total = set(), 0
    for model in models:
        for t in list(model.parameters()) + list(model.buffers()):
            key = (t.data_ptr(), t.numel())
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
