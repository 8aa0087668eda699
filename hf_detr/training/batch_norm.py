"""Trainable BatchNorm's running statistics, put back after a forward whose loss was non-finite.

A train-mode forward updates BatchNorm's running mean and variance before the loss is known: one
batch with non-finite activations would leave NaN statistics and every later forward NaN, though the
update itself is skipped. The statistics are copied before each forward (one batched copy) and
restored when any process found the loss or the matching non-finite. Frozen BatchNorm (the paper's
default) has nothing to guard.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNormStatistics:
    """The running statistics of `model`'s trainable BatchNorm layers and a copy to restore."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [
            buffer
            for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
            if buffer is not None
        ]
        self.saved = [buffer.clone() for buffer in self.buffers]

    def __bool__(self) -> bool:
        return bool(self.buffers)

    @torch.no_grad()
    def snapshot(self) -> None:
        torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.buffers, self.saved)


__all__ = ["BatchNormStatistics"]
