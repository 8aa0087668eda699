"""Training checkpoints: `accelerator.save_state` written atomically, the last K kept, resumable.

A save never damages the last good checkpoint, whenever it is killed:

1. every process writes `checkpoints/.incomplete-step-N`; the main process adds the progress and the
   learning-rate schedule (`training_state.json`), the EMA weights and, last, `checkpoint.json`, the
   manifest of every file and its size;
2. a re-save of step N first renames the existing `step-N` to `.replaced-step-N`, then renames the
   new one to `step-N`, then deletes `.replaced-step-N`;
3. pruning renames an old checkpoint to `.deleting-step-M` before deleting it.

`recover_checkpoints` (run before resuming) finishes or undoes whatever a killed save left: a complete
staged or replaced checkpoint goes back to `step-N`, leftovers are deleted. A checkpoint is complete
when its manifest's files are all there with their sizes; `latest_checkpoint` returns the newest
complete one and names any newer broken one it passes over. The best model's checkpoint is never
pruned. No file of a checkpoint can run code when read (`checkpoint_files.py` says what one may hold
and refuses the rest): nothing is registered with accelerate's `register_for_checkpointing`, whose
`custom_checkpoint_<n>.pkl` accelerate reads with a full unpickler. A save that finds the disk full
is one [`DiskFullError`] naming the last good checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")
LEFTOVER_PATTERN = re.compile(r"\.(incomplete|replaced|deleting)-step-(\d+)")
MANIFEST = "checkpoint.json"
STATE_FILE = "training_state.json"  # the TrainingState and the learning-rate scheduler's state
# how the OS, torch's zip writer and safetensors say that a write found no space left
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "unexpected pos", "file write failed")
logger = logging.getLogger("hf_detr.training")


class CheckpointError(RuntimeError):
    """A checkpoint that resuming refuses to read, or that could not be written; the message says why
    and what to do."""


class DiskFullError(CheckpointError):
    """A checkpoint or the final model could not be written: the disk is full."""


@dataclass
class TrainingState:
    """The run's progress, saved with the scheduler's state as JSON in `training_state.json`."""

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


def write_training_state(folder: Path, state: TrainingState, scheduler: Any) -> None:
    """`folder/training_state.json`: the progress counters and the learning-rate scheduler's state."""
    record = {"training": state.state_dict(), "scheduler": scheduler.state_dict()}
    (folder / STATE_FILE).write_text(json.dumps(record, indent=1))


def read_training_state(folder: Path, state: TrainingState, scheduler: Any) -> None:
    """Load what `write_training_state` wrote into `state` and `scheduler`; a CheckpointError naming the
    file when it is missing or holds anything else (keys either object does not have included)."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {STATE_FILE} (the progress and the schedule): it was written by an earlier "
            "hf_detr or by another program. Resume from a checkpoint this version wrote, or train again."
        )
    try:
        record = json.loads(path.read_text())
        for saved, target in ((record["training"], state), (record["scheduler"], scheduler)):
            unknown = set(saved) - set(target.state_dict())
            if unknown:
                raise KeyError(f"unknown keys {sorted(unknown)}")
            target.load_state_dict(saved)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise CheckpointError(
            f"{path} is not a training state hf_detr wrote ({type(error).__name__}: {error}); the checkpoint "
            "is damaged or was edited: resume from another one."
        ) from error


def checkpoint_steps(directory: Path) -> list[tuple[int, Path]]:
    """The `step-N` folders in `directory` (complete or not), oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.fullmatch(p.name))]
    return sorted(found)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (None: it is): its manifest or a file it lists is
    missing or has another size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} (a save that did not finish, or one written before checkpoints had manifests)"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes instead of {size}"
    return None


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint; a warning names each newer one that is broken."""
    broken = []
    for _, path in reversed(checkpoint_steps(directory)):
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in broken:
                logger.warning("Checkpoint %s is damaged (%s): resuming from %s instead.", bad, why, path)
            return path
        broken.append((path, problem))
    for bad, why in broken:
        logger.warning("Checkpoint %s is damaged (%s) and there is no older complete one.", bad, why)
    return None


def resolve_resume(value: str, directory: Path) -> Path | None:
    """`latest` or a path -> a checkpoint directory; None (start from the beginning) when the run's
    first save was killed; a clear error when there is no checkpoint folder at all."""
    if value == "latest":
        if not directory.is_dir():
            raise ValueError(f"--resume-from-checkpoint latest: no checkpoint in {directory}.")
        path = latest_checkpoint(directory)
        if path is None:
            logger.warning(
                "--resume-from-checkpoint latest: %s holds no complete checkpoint (the first save was "
                "interrupted); starting from the beginning.",
                directory,
            )
        return path
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"--resume-from-checkpoint {value}: no such checkpoint directory.")
    problem = checkpoint_problem(path)
    if problem is not None:
        logger.warning("--resume-from-checkpoint %s: %s; loading it anyway, as asked.", value, problem)
    return path


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}"


def recover_checkpoints(directory: Path) -> None:
    """Finish or undo what a killed save left in `directory` (main process only, before resuming):
    a complete `.incomplete-` or `.replaced-` copy of a step whose `step-N` is missing or broken
    takes its place (the staged copy first: it is the newer); every other leftover is deleted."""
    if not directory.is_dir():
        return
    leftovers = sorted(
        (m.group(1), int(m.group(2)), p)
        for p in directory.iterdir()
        if (m := LEFTOVER_PATTERN.fullmatch(p.name))
    )  # "deleting" < "incomplete" < "replaced": a staged copy is tried before the one it replaced
    for kind, step, path in leftovers:
        final = checkpoint_path(directory, step)
        usable = kind != "deleting" and checkpoint_problem(path) is None
        if usable and (not final.exists() or checkpoint_problem(final) is not None):
            if final.exists():
                _delete(final, directory)
            os.replace(path, final)
            logger.warning("Recovered checkpoint %s from an interrupted save (%s).", final, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)


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
    the main process (the training state, the EMA weights). A full disk: a DiskFullError, the
    partial files deleted, the last good checkpoint untouched."""
    final = checkpoint_path(directory, step)
    staging = directory / f".incomplete-step-{step:08d}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    partial = staging if accelerator.is_main_process else None
    with disk_full_errors(directory, f"the checkpoint of step {step}", directory, partial):
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if write_extra is not None:
                write_extra(staging)
            write_manifest(staging)
    if accelerator.is_main_process:
        replaced = directory / f".replaced-step-{step:08d}"
        if final.exists():  # a re-save of this step: the old copy stays whole until the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(staging, final)
        shutil.rmtree(replaced, ignore_errors=True)
        prune_checkpoints(directory, keep, protect)
    accelerator.wait_for_everyone()
    return final


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it came from, is a write that found no space left: ENOSPC or EDQUOT,
    torch's zip writer ("unexpected pos", "file write failed"), safetensors' "No space left on device"."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(error) for text in DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def disk_full_errors(
    folder: Path, what: str, checkpoints: Path, partial: Path | None = None
) -> Iterator[None]:
    """Turn a write into `folder` that fails for lack of space into one DiskFullError saying so and
    naming the last good checkpoint in `checkpoints`; `partial`, a folder of half-written files, is
    deleted first (its space freed). Other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        last = latest_checkpoint(checkpoints)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        raise DiskFullError(
            f"The disk holding {folder} is full: {what} could not be written; {kept}. Free space and "
            "resume with --resume-from-checkpoint latest."
        ) from error


def write_manifest(folder: Path) -> None:
    """`folder/checkpoint.json`: every file of the checkpoint and its size, written last and atomically."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    partial = folder / f"{MANIFEST}.partial"
    with open(partial, "w") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / MANIFEST)


def prune_checkpoints(directory: Path, keep: int, protect: int | None = None) -> None:
    """Delete all but the last `keep` checkpoints and the one of step `protect`."""
    for step, old in checkpoint_steps(directory)[:-keep]:
        if step != protect:
            _delete(old, directory)


def _delete(folder: Path, directory: Path) -> None:
    """Rename, then delete: a killed deletion leaves a `.deleting-` folder, never a partial `step-N`."""
    doomed = directory / f".deleting-{folder.name}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = [
    "CheckpointError",
    "DiskFullError",
    "TrainingState",
    "checkpoint_path",
    "checkpoint_problem",
    "checkpoint_steps",
    "disk_full_errors",
    "is_disk_full",
    "latest_checkpoint",
    "prune_checkpoints",
    "read_training_state",
    "recover_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "write_training_state",
]
