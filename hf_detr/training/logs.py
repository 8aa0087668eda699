"""What a run writes as it goes: loss averages over the last updates, and `log.jsonl`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoints import TrainingState


class LogWindow:
    """Loss components, throughput and ETA averaged over the updates since the last log line."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self.start = time.monotonic()

    def add(self, images: int, losses: tuple[torch.Tensor, dict[str, torch.Tensor]] | None) -> None:
        self.images += images
        if losses is None:
            return
        loss, loss_dict = losses
        for key, value in {"loss": loss, **loss_dict}.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.count += 1

    def flush(
        self, optimizer: Any, state: TrainingState, run_start: float, total_steps: int
    ) -> dict[str, Any] | None:
        if not self.count:
            return None
        elapsed = time.monotonic() - self.start
        done = state.global_step / total_steps
        record = {key: float(value) / self.count for key, value in self.sums.items()}  # one sync per log line
        record.update({f"lr_{i}": group["lr"] for i, group in enumerate(optimizer.param_groups)})
        record.update(
            images_per_second=self.images / max(elapsed, 1e-9),
            epoch=state.epoch,
            eta_minutes=(time.monotonic() - run_start) * (1 - done) / max(done, 1e-9) / 60,
        )
        self.sums, self.count, self.images, self.start = {}, 0, 0, time.monotonic()
        return record


class JsonlLog:
    """One JSON record per line in `path`, written by the main process only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


__all__ = ["JsonlLog", "LogWindow"]
