"""Training checkpoints: `accelerator.save_state` written atomically, the last K kept, resumable.

A checkpoint is first written to `checkpoints/.incomplete-step-N` by every process, then renamed to
`checkpoints/step-N` by the main process once all have finished: a save killed midway leaves only an
`.incomplete-*` folder, never a damaged `step-*` one. Checkpoints are this run's own files (model
weights in safetensors, the EMA weights with `--ema` in `ema.safetensors`; optimizer and RNG states
are read back with accelerate's loaders). The best model's checkpoint is never pruned.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")


@dataclass
class TrainingState:
    """Progress registered with `accelerator.register_for_checkpointing`."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    # the best evaluation (`metric_for_best_model`) and early stopping, so that they survive a resume
    best_metric: float | None = None
    best_step: int | None = None  # its checkpoint is kept whatever save_total_limit says
    best_stats: dict[str, float] | None = None
    evals_without_improvement: int = 0
    last_eval_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_steps(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    found = checkpoint_steps(directory)
    return found[-1][1] if found else None


def resolve_resume(value: str, directory: Path) -> Path:
    """`latest` or a path -> a checkpoint directory, with a clear error when there is none."""
    if value == "latest":
        path = latest_checkpoint(directory)
        if path is None:
            raise ValueError(f"--resume-from-checkpoint latest: no checkpoint in {directory}.")
        return path
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume-from-checkpoint {value}: no such checkpoint directory.")
    return path


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}"


def save_checkpoint(
    accelerator: Any,
    directory: Path,
    step: int,
    keep: int,
    write_extra: Callable[[Path], Any] | None = None,
    protect: int | None = None,
) -> Path:
    """Save the full training state atomically as `directory/step-{step}` and keep the last `keep`
    (and the checkpoint of step `protect`, the best model's). `write_extra(folder)` adds files on
    the main process (the EMA weights)."""
    final = checkpoint_path(directory, step)
    staging = directory / f".incomplete-step-{step:08d}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        prune_checkpoints(directory, keep, protect)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(directory: Path, keep: int, protect: int | None = None) -> None:
    """Delete all but the last `keep` checkpoints and the one of step `protect`."""
    for step, old in checkpoint_steps(directory)[:-keep]:
        if step != protect:
            shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "TrainingState",
    "checkpoint_path",
    "checkpoint_steps",
    "latest_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "save_checkpoint",
]
