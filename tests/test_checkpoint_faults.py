"""Kills at every point of a checkpoint save: resume continues from the newest complete checkpoint and
ends with the weights of an uninterrupted run; a damaged newest checkpoint falls back to the previous."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from test_training import arguments

from hf_detr.training import train
from hf_detr.training.checkpoints import (
    checkpoint_path,
    checkpoint_problem,
    latest_checkpoint,
    recover_checkpoints,
    save_checkpoint,
)

# 8 images, batch 2, 2 epochs: saves at 2, 4 (then 4 again: epoch 1 ends there), 6 and 8; 1 kept
COMMON = {"epochs": 2, "save_steps": 2, "save_total_limit": 1, "warmup_steps": 2}


class Killed(BaseException):
    """A SIGKILL, simulated: nothing after it runs (not even `except Exception` handlers)."""


class FaultInjector:
    """Counts every checkpoint file written and every rename or deletion under `root`, and raises
    `Killed` right after operation number `kill_at` (a deletion is killed halfway through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, kill_at: int | None = None) -> None:
        self.root, self.kill_at, self.operations = root.resolve(), kill_at, []
        real_replace, real_rmtree = os.replace, shutil.rmtree

        def replace(source, target):
            real_replace(source, target)
            if self.watched(target):
                self.done(f"rename {Path(source).name} -> {Path(target).name}")

        def rmtree(path, ignore_errors=False, **kwargs):
            if not (self.watched(path) and Path(path).is_dir()):
                return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)
            if self.kill_at == len(self.operations) + 1:  # killed halfway: one file gone, the rest left
                next(iter(sorted(p for p in Path(path).rglob("*") if p.is_file()))).unlink()
            else:
                real_rmtree(path, ignore_errors=ignore_errors, **kwargs)
            self.done(f"delete {Path(path).name}")

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        self.real_replace, self.real_rmtree = real_replace, real_rmtree

    def watched(self, path) -> bool:
        return str(Path(path).resolve()).startswith(str(self.root))

    def done(self, operation: str) -> None:
        self.operations.append(operation)
        if len(self.operations) == self.kill_at:
            raise Killed(operation)

    def write_accelerate_files_one_by_one(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """accelerate's `save_state`, its files moved into the checkpoint one at a time (each a kill point)."""
        real_save, scratch = Accelerator.save_state, self.root.parent / f"{self.root.name}-scratch"

        def save_state(accelerator, output_dir=None, **kwargs):
            self.real_rmtree(scratch, ignore_errors=True)
            real_save(accelerator, str(scratch), **kwargs)
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            for file in sorted(scratch.iterdir()):
                self.real_replace(file, Path(output_dir) / file.name)
                self.done(f"write {Path(output_dir).name}/{file.name}")

        monkeypatch.setattr(Accelerator, "save_state", save_state)


class FilesAccelerator:
    """One process that saves three files whose bytes tell the step."""

    is_main_process = True

    def __init__(self, injector: FaultInjector, step: int) -> None:
        self.injector, self.step = injector, step

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, output_dir: str) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
            (Path(output_dir) / name).write_bytes(f"{name} of step {self.step}".encode() * self.step)
            self.injector.done(f"write {name}")


SAVES = [2, 4, 4, 6]  # the re-save of step 4 is the one the issue found


def run_saves(directory: Path, injector: FaultInjector, steps: list[int], keep: int) -> None:
    for step in steps:
        save_checkpoint(FilesAccelerator(injector, step), directory, step, keep)


@pytest.mark.parametrize("keep", [1, 2])
def test_a_save_killed_after_any_operation_leaves_the_newest_complete_checkpoint(tmp_path, monkeypatch, keep):
    counting = FaultInjector(monkeypatch, tmp_path / "count")
    run_saves(tmp_path / "count", counting, SAVES, keep)
    total = len(counting.operations)
    assert total >= 4 * 5  # three files, the manifest and a rename per save, plus replacements and pruning
    for kill_at in range(1, total + 1):
        directory = tmp_path / f"kill-{keep}-{kill_at}"
        injector = FaultInjector(monkeypatch, directory, kill_at)
        completed = []
        with pytest.raises(Killed):
            for step in SAVES:
                run_saves(directory, injector, [step], keep)
                completed.append(step)
        recover_checkpoints(directory)
        latest = latest_checkpoint(directory)
        if completed:  # never behind the last save that returned
            assert latest is not None and int(latest.name[5:]) >= completed[-1], injector.operations
        if latest is not None:  # and whole, with the bytes of its step
            step = int(latest.name[5:])
            assert checkpoint_problem(latest) is None
            assert (
                latest / "model.safetensors"
            ).read_bytes() == f"model.safetensors of step {step}".encode() * step
        assert not [p.name for p in directory.iterdir() if p.name.startswith(".")], "leftovers after recovery"
        # the resumed run saves the rest: the end is the uninterrupted one's
        resume_from = int(latest.name[5:]) if latest is not None else 0
        monkeypatch.undo()
        rest = [s for s in SAVES if s > resume_from] or SAVES[-1:]  # a run always saves at its end
        run_saves(directory, FaultInjector(monkeypatch, directory), rest, keep)
        assert [p.name for p in sorted(directory.iterdir())] == [
            checkpoint_path(directory, s).name for s in sorted(set(SAVES))[-keep:]
        ]


def fresh_state() -> None:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def assert_same_final_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    worst = max((first[k].float() - second[k].float()).abs().max().item() for k in first)
    assert worst <= 1e-6, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes) -> tuple[Path, list[str]]:
    """The run without a kill: its output folder and the list of its checkpoint operations."""
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "full"
    fresh_state()
    with pytest.MonkeyPatch.context() as monkeypatch:
        counting = FaultInjector(monkeypatch, output_dir)
        counting.write_accelerate_files_one_by_one(monkeypatch)
        train(arguments(output_dir, shapes, **COMMON))
    fresh_state()
    return output_dir, counting.operations


def test_a_training_run_killed_inside_its_saves_resumes_to_the_uninterrupted_weights(
    tmp_path, shapes, monkeypatch, uninterrupted
):
    full, operations = uninterrupted
    resave = operations.index("rename step-00000004 -> .replaced-step-00000004")  # the epoch-end re-save
    # the old copy moved aside, the new one in place (the old not yet deleted), the next pruning halfway
    kill_points = [resave + 1, resave + 2, operations.index("delete .deleting-step-00000004") + 1]
    for kill_at in kill_points:
        output_dir = tmp_path / f"kill-{kill_at}"
        monkeypatch.undo()
        fresh_state()
        injector = FaultInjector(monkeypatch, output_dir, kill_at)
        injector.write_accelerate_files_one_by_one(monkeypatch)
        with pytest.raises(Killed):
            train(arguments(output_dir, shapes, **COMMON))
        monkeypatch.undo()
        fresh_state()
        resumed = train(arguments(output_dir, shapes, resume_from_checkpoint="latest", **COMMON))
        assert resumed.global_step == 8, operations[kill_at - 1]
        assert_same_final_weights(output_dir, full)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    tmp_path, shapes, caplog, uninterrupted
):
    settings = {**COMMON, "save_total_limit": 2}  # the number kept changes no weight
    fresh_state()
    train(arguments(tmp_path / "run", shapes, stop_after_steps=6, **settings))
    newest, previous = (checkpoint_path(tmp_path / "run" / "checkpoints", s) for s in (6, 4))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by hand
    fresh_state()
    with caplog.at_level(logging.WARNING, logger="hf_detr.training"):
        resumed = train(arguments(tmp_path / "run", shapes, resume_from_checkpoint="latest", **settings))
    message = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert (
        str(newest) in message and str(previous) in message and "model.safetensors has 100 bytes" in message
    )
    assert resumed.global_step == 8
    assert_same_final_weights(tmp_path / "run", uninterrupted[0])


def test_a_nonfinite_forward_leaves_trainable_batch_norm_as_it_was(tmp_path, shapes, monkeypatch):
    """The second forward's activations turn NaN inside the backbone (its first BatchNorm sees NaN):
    the update is skipped and the statistics are those from before that forward."""
    from hf_detr import HfDetrForObjectDetection

    real_forward, calls, before = HfDetrForObjectDetection.forward, [], {}

    def forward(self, *args, **kwargs):
        calls.append(self.training)
        if len(calls) != 2:
            return real_forward(self, *args, **kwargs)
        before.update({n: b.clone() for n, b in self.named_buffers() if "running" in n})
        first_norm = next(m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d))
        hook = first_norm.register_forward_pre_hook(lambda module, inputs: (inputs[0] * float("nan"),))
        try:
            return real_forward(self, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(HfDetrForObjectDetection, "forward", forward)
    fresh_state()
    result = train(arguments(tmp_path / "run", shapes, max_steps=2, logging_steps=1))
    assert result.global_step == 2 and calls[:2] == [True, True]
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert log.count("skipped_nonfinite") == 1
    final = load_file(tmp_path / "run" / "model.safetensors")
    running = {name: value for name, value in final.items() if "running" in name}
    assert running and running.keys() == before.keys()
    assert all(torch.equal(running[name], before[name]) for name in running)  # as before the NaN forward
    assert all(torch.isfinite(value).all() for value in final.values())


def test_resume_latest_without_a_complete_checkpoint_starts_over_and_without_a_folder_is_an_error(
    tmp_path, caplog
):
    from hf_detr.training.checkpoints import resolve_resume

    with pytest.raises(ValueError, match="no checkpoint in"):
        resolve_resume("latest", tmp_path / "none")
    partial = tmp_path / "checkpoints" / "step-00000002"  # a first save killed before its manifest
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="hf_detr.training"):
        assert resolve_resume("latest", tmp_path / "checkpoints") is None
        assert resolve_resume(str(partial), tmp_path / "checkpoints") == partial  # asked for: loaded
    messages = [r.getMessage() for r in caplog.records]
    assert any("no complete checkpoint" in m and "starting from the beginning" in m for m in messages)
    assert any(
        f"--resume-from-checkpoint {partial}" in m and "no readable checkpoint.json" in m for m in messages
    )
