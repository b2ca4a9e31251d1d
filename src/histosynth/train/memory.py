"""Memory accounting of a training process: CUDA's own peak, or on the CPU peak RSS above the
baseline taken after the heavy imports (so the 0.8 GB of torch + diffusers is not counted)."""

from __future__ import annotations

import torch

from ..manifest import PeakMemory


class MemoryMeter:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.rss = None if self.cuda else PeakMemory()

    def __enter__(self) -> "MemoryMeter":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.cuda:
            self.rss.__exit__(*exc)

    def results(self) -> dict:
        if self.cuda:
            return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated()), "memory_kind": "cuda"}
        return {"peak_memory_bytes": int(max(0, self.rss.peak - self.rss.baseline)),
                "memory_kind": "cpu-rss-above-baseline", "rss_baseline_bytes": int(self.rss.baseline)}
