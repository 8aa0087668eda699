"""The timing helpers the benchmarks share: the median of timed runs after warm-ups; the fastest run."""

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


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` runs of `fn` (the machine is shared) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result
