"""Untrusted checkpoints run nothing, full disks are one clear error (issue 36).

Every file of a checkpoint, and every file accelerate could read from one, is replaced in turn by a
pickle whose unpickling touches a marker file, the manifest's sizes rewritten to match: resuming
refuses the checkpoint with an error naming the file, and the marker never appears. A save that
finds the disk full says so, deletes its partial files, keeps the last good checkpoint, and the
resume from that checkpoint ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from test_checkpoint_faults import assert_same_final_weights, fresh_state
from test_training import arguments

from hf_detr.training import train
from hf_detr.training import trainer as trainer_module
from hf_detr.training.checkpoints import (
    MANIFEST,
    CheckpointError,
    DiskFullError,
    checkpoint_path,
    checkpoint_problem,
    is_disk_full,
)
from hf_detr.training.ema import ModelEma

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")

# saves at steps 2 and 4 (both kept); --ema adds ema.safetensors to each checkpoint
COMMON = {"max_steps": 4, "save_steps": 2, "save_total_limit": 2, "warmup_steps": 2, "ema": True}
WRITTEN = [  # what a checkpoint of this run holds: test_the_checkpoint_holds_these_files keeps it true
    "checkpoint.json",
    "ema.safetensors",
    "model.safetensors",
    "optimizer.bin",
    "random_states_0.pkl",
    "training_state.json",
]
PLANTED = [  # files accelerate reads in other set-ups (registered objects, schedulers, samplers, fp16, FSDP)
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
    "scheduler.bin",
    "sampler.bin",
    "dl_state_dict.bin",
    "pytorch_model.bin",
    "scaler.pt",
    "random_states_1.pkl",
    "pytorch_model_fsdp_0.bin",
]
TORCH_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch 2.14, disk full


class Payload:
    """Unpickled, it touches `marker`: what an attacker's `os.system` would be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def payload_bytes(kind: str, marker: Path, scratch: Path) -> bytes:
    """The attacker's file: a bare pickle (the issue's) or a `torch.save` zip holding the payload."""
    if kind == "pickle":
        return pickle.dumps(Payload(marker))
    torch.save({"state": Payload(marker)}, scratch)
    return scratch.read_bytes()


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of a checkpoint whose files are hard links (fast); `replace` never writes through one."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def replace(folder: Path, name: str, data: bytes) -> None:
    """Put `data` in `folder/name` and, as an attacker would, its size in the manifest."""
    path = folder / name
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    if name != MANIFEST:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["files"][name] = len(data)
        (folder / MANIFEST).unlink()
        (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shapes) -> Path:
    """A run of 4 steps with two checkpoints, uninterrupted (the reference for the exact resumes)."""
    output_dir = tmp_path_factory.mktemp("security") / "finished"
    fresh_state()
    train(arguments(output_dir, shapes, **COMMON))
    fresh_state()
    return output_dir


def resume(output_dir: Path, shapes: Path, checkpoint: Path | str = "latest"):
    return train(arguments(output_dir, shapes, resume_from_checkpoint=str(checkpoint), **COMMON))


def test_the_checkpoint_holds_these_files_and_the_payloads_do_run_code_when_unpickled(finished, tmp_path):
    assert sorted(p.name for p in checkpoint_path(finished / "checkpoints", 2).iterdir()) == WRITTEN
    for kind in ("pickle", "torch"):  # the marker appears when the payload is read as accelerate did
        marker = tmp_path / f"marker-{kind}"
        data = payload_bytes(kind, marker, tmp_path / "scratch")
        if kind == "torch":
            torch.load(tmp_path / "scratch", weights_only=False)
        else:
            pickle.loads(data)
        assert marker.is_file()


@pytest.mark.parametrize("kind", ["pickle", "torch"])
@pytest.mark.parametrize("name", WRITTEN + PLANTED)
def test_a_checkpoint_file_replaced_by_a_pickle_is_refused_by_name_and_runs_nothing(
    finished, shapes, tmp_path, name, kind
):
    checkpoint = linked_copy(
        checkpoint_path(finished / "checkpoints", 2), tmp_path / "checkpoints" / "step-2"
    )
    marker = tmp_path / "marker"
    replace(checkpoint, name, payload_bytes(kind, marker, tmp_path / "scratch"))
    with pytest.raises(CheckpointError) as refusal:
        resume(tmp_path / "run", shapes, checkpoint)
    assert not marker.exists(), "the payload ran"
    message = str(refusal.value)
    assert f"Refusing to resume from {checkpoint}: {name} " in message, message
    assert "Traceback" not in message and len(message.replace(str(checkpoint), "")) < 600


def test_the_issues_attack_on_the_latest_checkpoint_runs_nothing(finished, shapes, tmp_path):
    """The issue's steps: custom_checkpoint_1.pkl (the training state) a malicious pickle, the sizes in
    checkpoint.json rewritten, `--resume-from-checkpoint latest`."""
    shutil.copytree(finished / "checkpoints", tmp_path / "run" / "checkpoints", copy_function=os.link)
    newest = checkpoint_path(tmp_path / "run" / "checkpoints", 4)
    replace(newest, "custom_checkpoint_1.pkl", payload_bytes("pickle", tmp_path / "marker", tmp_path / "x"))
    with pytest.raises(CheckpointError, match=r"custom_checkpoint_1\.pkl is a pickle that accelerate reads"):
        resume(tmp_path / "run", shapes)
    assert not (tmp_path / "marker").exists()


def test_a_checkpoint_of_the_earlier_layout_is_refused_with_what_to_do(finished, shapes, tmp_path):
    """Before, the schedule and progress were accelerate's custom_checkpoint_0/1.pkl: even benign,
    they are refused (a full unpickler reads them), naming the file and saying what to do."""
    checkpoint = linked_copy(checkpoint_path(finished / "checkpoints", 2), tmp_path / "old")
    state = json.loads((checkpoint / "training_state.json").read_text())
    (checkpoint / "training_state.json").unlink()
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    del manifest["files"]["training_state.json"]
    replace(checkpoint, MANIFEST, json.dumps(manifest).encode())
    for index, part in enumerate(("scheduler", "training")):
        torch.save(state[part], tmp_path / "part")
        replace(checkpoint, f"custom_checkpoint_{index}.pkl", (tmp_path / "part").read_bytes())
    with pytest.raises(CheckpointError) as refusal:
        resume(tmp_path / "run", shapes, checkpoint)
    message = str(refusal.value)
    assert "custom_checkpoint_0.pkl is a pickle" in message and "earlier hf_detr versions" in message
    assert "resume from a checkpoint this version wrote, or train again" in message


def test_a_training_state_with_keys_of_its_own_is_refused(finished, shapes, tmp_path):
    checkpoint = linked_copy(checkpoint_path(finished / "checkpoints", 2), tmp_path / "edited")
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["scheduler"]["optimizer"] = "not the optimizer"
    replace(checkpoint, "training_state.json", json.dumps(state).encode())
    with pytest.raises(CheckpointError, match=r"training_state\.json is not a training state hf_detr wrote"):
        resume(tmp_path / "run", shapes, checkpoint)


# ---------------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------------
def test_the_ways_a_full_disk_shows_are_recognised():
    assert is_disk_full(RuntimeError(TORCH_ERROR))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("CUDA out of memory")) and not is_disk_full(
        OSError(errno.EACCES, "no")
    )


def fail_second_save_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """accelerate's save_state writes the second checkpoint's files, then fails as torch does on a full disk."""
    real_save, calls = Accelerator.save_state, []

    def save_state(accelerator, output_dir=None, **kwargs):
        calls.append(output_dir)
        real_save(accelerator, output_dir, **kwargs)
        if len(calls) == 2:
            raise RuntimeError(TORCH_ERROR)

    monkeypatch.setattr(Accelerator, "save_state", save_state)


def fail_second_ema_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second checkpoint's EMA weights find no space (an OSError, ENOSPC)."""
    real_save, calls = ModelEma.save, []

    def save(ema, directory):
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(ema, directory)

    monkeypatch.setattr(ModelEma, "save", save)


@pytest.mark.parametrize("fail", [fail_second_save_state, fail_second_ema_save])
def test_a_checkpoint_save_on_a_full_disk_says_so_and_the_last_good_one_resumes_exactly(
    finished, shapes, tmp_path, monkeypatch, fail
):
    fail(monkeypatch)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(DiskFullError) as error:
        train(arguments(tmp_path / "run", shapes, **COMMON))
    good = checkpoint_path(checkpoints, 2)
    assert str(error.value) == (
        f"The disk holding {checkpoints} is full: the checkpoint of step 4 could not be written; the last "
        f"good checkpoint is {good}. Free space and resume with --resume-from-checkpoint latest."
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == [good.name]  # the partial files deleted
    assert checkpoint_problem(good) is None
    monkeypatch.undo()
    fresh_state()
    resumed = resume(tmp_path / "run", shapes)
    assert resumed.global_step == 4
    assert_same_final_weights(tmp_path / "run", finished)


def test_a_final_model_save_on_a_full_disk_says_so_and_the_resume_writes_it(
    finished, shapes, tmp_path, monkeypatch
):
    def save_final_model(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(trainer_module, "save_final_model", save_final_model)
    output_dir = tmp_path / "run"
    with pytest.raises(DiskFullError) as error:
        train(arguments(output_dir, shapes, **COMMON))
    last = checkpoint_path(output_dir / "checkpoints", 4)
    assert str(error.value).startswith(
        f"The disk holding {output_dir} is full: the final model could not be written; the last good "
        f"checkpoint is {last}."
    )
    monkeypatch.undo()
    fresh_state()
    assert resume(output_dir, shapes).global_step == 4
    assert_same_final_weights(output_dir, finished)
