"""What a training checkpoint may hold, checked before anything in it is read: no file of it can run code.

A checkpoint's files are read by three readers, none of which runs code from a file:

- JSON: `checkpoint.json` (the manifest) and `training_state.json` (the progress and the schedule);
- safetensors: the weights, `model.safetensors`, and with `--ema` their average, `ema.safetensors`;
- PyTorch's restricted unpickler, `torch.load(weights_only=True)`, which builds tensors and plain data
  only: accelerate's `optimizer.bin`, `random_states_<process>.pkl` and, with fp16, `scaler.pt`.

Before a resume, [`check_checkpoint_files`] reads every file with the reader meant for its name and
refuses the checkpoint, naming the file, when that reader rejects it or when the name is none of
these. Refused by name: `custom_checkpoint_<n>.pkl` (what `register_for_checkpointing` saves, where
hf_detr kept the schedule and progress before), which accelerate reads with a full unpickler that
runs any code the file holds, and FSDP's and DeepSpeed's files, whose readers unpickle beyond what
can be checked here (`torch.distributed.checkpoint` reads its `.metadata` with `pickle.load`).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open

from .checkpoints import MANIFEST, STATE_FILE, CheckpointError
from .ema import EMA_FILE

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
REQUIRED_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
TORCH_FILES = re.compile(r"optimizer\.bin|random_states_\d+\.pkl|scaler\.pt")
# what FSDP (sharded or full state dicts) and DeepSpeed write in place of model.safetensors and optimizer.bin
DISTRIBUTED_FILES = re.compile(
    r"(pytorch_model_fsdp_\d+|optimizer_\d+)(\.bin$|/)|pytorch_model/|zero_to_fp32\.py$|latest$"
)
ALLOWED = (
    f"{MANIFEST}, {STATE_FILE}, {MODEL_FILE}, {EMA_FILE}, {OPTIMIZER_FILE}, random_states_<n>.pkl, scaler.pt"
)
ANOTHER_ONE = "the checkpoint was damaged or tampered with: resume from another one"


def check_checkpoint_files(folder: Path) -> None:
    """Refuse (a CheckpointError naming the file) a checkpoint with a file of a name it may not hold,
    a file its reader rejects, or without one of REQUIRED_FILES; every file is read once to check it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            problem = file_problem(path, path.relative_to(folder).as_posix())
            if problem is not None:
                raise CheckpointError(f"Refusing to resume from {folder}: {path.name} {problem}")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} has no {name}: it is not a checkpoint hf_detr wrote, or it is incomplete."
            )


def file_problem(path: Path, name: str) -> str | None:
    """Why `path`, in a checkpoint as `name`, may not be read (None: it may), in words that end a
    sentence naming it."""
    reader = _reader(name)
    if reader is None:
        return _not_allowed(name)
    what, read = reader
    try:
        read(path)
    except Exception as error:  # each reader's errors come in many types: all of them refuse the file
        return f"{_why(error, what)}; {ANOTHER_ONE}."
    return None


def _reader(name: str) -> tuple[str, Callable[[Path], None]] | None:
    """What a file of this name is and the function that reads it to check it; None: not allowed."""
    if name in (MANIFEST, STATE_FILE):
        return "valid JSON", _read_json
    if name in (MODEL_FILE, EMA_FILE):
        return "a safetensors file", _read_safetensors
    if TORCH_FILES.fullmatch(name):
        return "a file that torch.load(weights_only=True) reads", _read_torch
    return None


def _not_allowed(name: str) -> str:
    """Why a file of this name is refused, and what to do."""
    if re.fullmatch(r"custom_checkpoint_\d+\.pkl", name):
        return (
            "is a pickle that accelerate reads with a full unpickler, which runs any code it holds. "
            "Checkpoints of earlier hf_detr versions kept the schedule and progress there: resume from "
            "a checkpoint this version wrote, or train again."
        )
    if DISTRIBUTED_FILES.match(name):
        return (
            "is FSDP's or DeepSpeed's: their readers unpickle (torch.distributed.checkpoint's .metadata, "
            "DeepSpeed's states) in ways hf_detr cannot check, so it resumes only single-process and DDP "
            "checkpoints. Train again, or resume this one with accelerate yourself if you trust it."
        )
    return (
        f"is not a file hf_detr checkpoints hold (they hold only {ALLOWED}); a file of another kind may "
        "be read by a reader that runs code. Remove it if you know where it came from, or resume from "
        "another checkpoint."
    )


def _why(error: Exception, what: str) -> str:
    """What a reader's error means for the file, with the telling part of its message."""
    if isinstance(error, NotTorchZip):
        return str(error)
    lines = str(error).splitlines() or [""]
    detail = next((line for line in lines if "GLOBAL" in line), lines[0]).split(". Please")[0].strip()
    detail = detail.removeprefix("WeightsUnpickler error: ")[:300]
    if isinstance(error, pickle.UnpicklingError):
        return (
            f"holds objects other than tensors and plain data, which could run code if unpickled ({detail})"
        )
    return f"is not {what} ({type(error).__name__}: {detail})"


class NotTorchZip(ValueError):
    """A file in a `torch.load` slot that is no `torch.save` zip."""


def _read_json(path: Path) -> None:
    json.loads(path.read_bytes())


def _read_safetensors(path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:  # the header: the tensors' names and sizes
        handle.keys()


def _read_torch(path: Path) -> None:
    """Unpickle as accelerate will (`weights_only=True`, its numpy allowlist), the tensors' data mapped,
    not read; a file that is no `torch.save` zip (a bare pickle) is refused before any unpickling."""
    from accelerate.utils import load

    if not zipfile.is_zipfile(path):
        raise NotTorchZip(
            "is no torch.save zip file but a bare pickle (which could run code if unpickled) or a damaged file"
        )
    load(str(path), map_location="cpu", mmap=True, weights_only=True)


__all__ = ["check_checkpoint_files", "file_problem"]
