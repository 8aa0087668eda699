"""The timing helper the benchmarks share: warm-up runs, then the median of timed runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(
    fn: Callable[[], object], runs: int, warmup: int = 1, device: torch.device | None = None
) -> float:
    """Median wall time of `fn` over `runs` calls after `warmup` untimed ones (CUDA work is waited for)."""
    synchronize = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
