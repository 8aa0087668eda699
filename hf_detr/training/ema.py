"""`--ema`: an exponential moving average of the model's weights, evaluated and saved instead of them.

The common DETR trainers (RT-DETR, D-FINE, ultralytics' `ModelEMA`, rf-detr's `ModelEma`) average
every parameter and buffer after each optimizer update k with a decay that ramps up:

    d_k = decay * (1 - exp(-k / tau)),    EMA_k = d_k * EMA_{k-1} + (1 - d_k) * W_k,    EMA_0 = W_0

so the average follows the fast changes of the first updates and averages over about 1 / (1 - decay)
updates once k is a few tau. RT-DETR, D-FINE and ultralytics use decay 0.9999 and tau 2000 (our
defaults); rf-detr, tuned for short fine-tuning runs, 0.993 and 100. The average is torch's
`AveragedModel` with this ramp as its `multi_avg_fn`, kept in fp32 on the training device. Every
process updates its own copy from its own replica after the same updates, so under DDP all copies
agree (FSDP's sharded parameters are not supported). A checkpoint carries it as `ema.safetensors`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim.swa_utils import AveragedModel

EMA_FILE = "ema.safetensors"


class ModelEma:
    """The moving average of `model`'s parameters and buffers (see the module docstring)."""

    def __init__(
        self, model: nn.Module, decay: float, tau: float, device: torch.device | None = None
    ) -> None:
        if not 0 <= decay < 1 or tau <= 0:
            raise ValueError(f"EMA needs 0 <= decay < 1 and tau > 0, got decay={decay}, tau={tau}.")
        self.decay, self.tau, self.updates = decay, tau, 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        # the copy moves, the update counter `n_averaged` stays on the CPU: no device sync per update
        self.averaged.module.requires_grad_(False).eval().to(device or next(model.parameters()).device)
        self.averaged.update_parameters(model)  # EMA_0 = W_0 (AveragedModel copies on its first call)

    @property
    def module(self) -> nn.Module:
        """The averaged model (always in eval mode)."""
        return self.averaged.module

    def decay_at(self, update: int) -> float:
        """d_k of the k-th update (1-based)."""
        return self.decay * (1 - math.exp(-update / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold `model`'s weights after an optimizer update into the average."""
        self.updates += 1
        self.averaged.update_parameters(model)

    def _average(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], _count: torch.Tensor
    ) -> None:
        """`AveragedModel`'s multi_avg_fn, called per device and dtype: EMA += (1 - d_k) (W - EMA)."""
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - self.decay_at(self.updates))
        else:  # integer buffers (BatchNorm's num_batches_tracked) are counts, not weights: copied
            torch._foreach_copy_(averaged, current)

    def save(self, directory: Path) -> Path:
        """The averaged weights as `directory/ema.safetensors`, the update count in its metadata."""
        path = Path(directory) / EMA_FILE
        metadata = {"updates": str(self.updates), "decay": repr(self.decay), "tau": repr(self.tau)}
        save_model(self.module, str(path), metadata=metadata)
        return path

    def load(self, directory: Path) -> None:
        """Read back what `save` wrote (the average and its update count)."""
        path = Path(directory) / EMA_FILE
        load_model(self.module, str(path))  # read on the CPU, copied onto the average's device
        with safe_open(str(path), framework="pt") as handle:
            self.updates = int(handle.metadata()["updates"])
        self.averaged.n_averaged.fill_(self.updates + 1)

    @torch.no_grad()
    def restart(self, model: nn.Module) -> None:
        """Start the average again from `model`'s weights (EMA_0 = W, k = 0)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0
        self.averaged.n_averaged.fill_(1)


__all__ = ["EMA_FILE", "ModelEma"]
