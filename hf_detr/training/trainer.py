"""The training loop with Accelerate: the paper's recipe, from one CPU to many GPUs, resumable exactly.

One optimizer update = `gradient_accumulation_steps` batches per process. The learning-rate schedule
is per update (optional linear warm-up, then x0.1 after `lr_drop` of the updates, the paper's StepLR).
Every batch agrees across processes, in one small all-reduce, on whether its loss is finite and
whether a stop was requested (SIGTERM, Ctrl-C), so all processes skip or stop at the same update and
DDP never waits on a process that left.
"""

from __future__ import annotations

import logging
import re
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..evaluation.loop import evaluate_model, evaluate_panoptic_model
from ..loss_detr import NonFiniteMatchingCostError
from .arguments import TrainingArguments
from .checkpoints import save_checkpoint
from .output import save_final_model
from .setup import TrainingRun, setup_run

logger = logging.getLogger("hf_detr.training")
STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130}


@dataclass
class TrainingResult:
    output_dir: Path
    global_step: int
    stats: dict[str, float] | None  # the final COCO evaluation
    stop_reason: str  # "completed", "stop_after_steps", "time_limit", "signal", "nonfinite"
    exit_code: int = 0
    nonfinite_steps: int = 0


class TrainingStopped(RuntimeError):
    """Training stopped before its end (non-finite losses); a checkpoint was saved."""


class StopRequest:
    """SIGTERM / Ctrl-C set a flag; the loop agrees on it across processes and stops cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:  # a second signal: leave now
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning(
            "Received signal %d: saving a checkpoint after the current step, then exiting.", signum
        )

    @contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def train(args: TrainingArguments) -> TrainingResult:
    """Train, evaluate and save as `args` says; returns where the model is and its final COCO stats."""
    run = setup_run(args)
    stop, stop_reason = StopRequest(), None
    with stop.installed():
        while run.state.global_step < run.total_steps and stop_reason is None:
            run.model.train()
            for batch in run.epoch_batches():
                flags = train_batch(run, batch, stop)
                if not run.accelerator.sync_gradients:
                    continue  # accumulating
                finish_update(run)
                stop_reason = stop_decision(run, flags, stop)
                if stop_reason is not None or run.state.global_step >= run.total_steps:
                    break
                evaluate_and_save_on_step(run)
            else:
                end_epoch(run)
    run.progress.close()
    return conclude(run, stop_reason or "completed", stop)


def train_batch(run: TrainingRun, batch: dict[str, Any], stop: StopRequest) -> list[float]:
    """Forward, loss, backward and (at the end of an update) the optimizer step of one batch.

    Returns the flags every process agreed on: [non-finite losses, stop signals, out of time] (sums
    over processes). An update with a non-finite loss or gradient norm anywhere is skipped everywhere.
    """
    args, accelerator = run.args, run.accelerator
    with accelerator.accumulate(run.model):
        outputs = run.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        try:
            loss, loss_dict = run.unwrapped.loss_from_outputs(outputs, batch["labels"])
            local_bad = (~torch.isfinite(loss.detach())).float()  # stays on the device
        except NonFiniteMatchingCostError:
            # keep every parameter in the graph so all processes run the same backward
            loss = outputs.logits.sum() * 0 + outputs.pred_boxes.sum() * 0
            loss_dict, local_bad = {}, loss.new_ones((), dtype=torch.float32)
        out_of_time = (
            args.time_limit_minutes is not None
            and (time.monotonic() - run.start_time) / 60 >= args.time_limit_minutes
        )
        host_flags = local_bad.new_tensor([stop.signal is not None, out_of_time])
        # one all-reduce and one host transfer per batch: every process takes the same decisions
        flags = accelerator.reduce(torch.cat([local_bad.reshape(1), host_flags]), reduction="sum").tolist()
        run.update_is_bad |= flags[0] > 0
        accelerator.backward(loss)
        if accelerator.sync_gradients and not run.update_is_bad:
            grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
            run.update_is_bad = not bool(torch.isfinite(torch.as_tensor(grad_norm)))
        if not (accelerator.sync_gradients and run.update_is_bad):
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    images = batch["pixel_values"].shape[0] * accelerator.num_processes
    run.window.add(images, None if run.update_is_bad else (loss, loss_dict))
    return flags


def finish_update(run: TrainingRun) -> None:
    """Advance the schedule and counters after an update (skipped ones count too), and log."""
    state = run.state
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        run.scheduler.step()
    state.global_step += 1
    state.step_in_epoch += 1
    run.progress.update(1)
    if run.update_is_bad:
        state.nonfinite_total += 1
        state.nonfinite_consecutive += 1
        run.log.write(
            {"event": "skipped_nonfinite", "step": state.global_step, "total": state.nonfinite_total}
        )
        logger.warning(
            "Step %d: non-finite loss or gradients, update skipped (%d in a row, %d in total).",
            state.global_step, state.nonfinite_consecutive, state.nonfinite_total,
        )  # fmt: skip
    else:
        state.nonfinite_consecutive = 0
    run.update_is_bad = False
    if state.global_step % run.args.logging_steps == 0:
        log_training(run)


def log_training(run: TrainingRun) -> None:
    record = run.window.flush(run.optimizer, run.state, run.start_time, run.total_steps)
    if record:
        step = run.state.global_step
        run.accelerator.log({f"train/{k}": v for k, v in record.items()}, step=step)
        run.log.write({"event": "train", "step": step, **record})
        run.progress.set_postfix(loss=f"{record['loss']:.3f}", eta=f"{record['eta_minutes']:.1f}min")


def stop_decision(run: TrainingRun, flags: list[float], stop: StopRequest) -> str | None:
    """Why the run stops after this update, or None to go on (the same on every process)."""
    args, state = run.args, run.state
    if state.nonfinite_consecutive >= args.max_consecutive_nonfinite:
        return "nonfinite"
    if flags[1] > 0:
        return "signal"
    if args.stop_after_steps is not None and state.global_step >= args.stop_after_steps:
        return "stop_after_steps"
    if flags[2] > 0:
        return "time_limit"
    return None


# ---------------------------------------------------------------------------------------------------
# Evaluation and checkpoints
# ---------------------------------------------------------------------------------------------------
def is_eval_step(run: TrainingRun) -> bool:
    return bool(run.args.eval_steps) and run.state.global_step % run.args.eval_steps == 0


def evaluate_and_save_on_step(run: TrainingRun) -> None:
    """Evaluation every `eval_steps` and a checkpoint every `save_steps` updates."""
    if is_eval_step(run):
        run_evaluation(run)
    if run.args.save_steps and run.state.global_step % run.args.save_steps == 0:
        save(run)


def end_epoch(run: TrainingRun) -> None:
    """The epoch ended before the last update: evaluate every `eval_epochs` epochs, save."""
    run.state.epoch += 1
    run.state.step_in_epoch = 0
    every = run.args.eval_epochs
    if every and run.state.epoch % every == 0 and not is_eval_step(run):  # else evaluated just now
        run_evaluation(run)
    save(run)


def save(run: TrainingRun) -> Path:
    return save_checkpoint(run.accelerator, run.checkpoints, run.state.global_step, run.args.save_total_limit)


def run_evaluation(run: TrainingRun) -> dict[str, Any] | None:
    """COCO stats (or PQ for panoptic) on the evaluation split (main process; None elsewhere or without
    one), logged."""
    if run.eval_loader is None:
        return None
    if run.args.task == "panoptic":
        stats = evaluate_panoptic_model(
            run.unwrapped, run.eval_loader, run.make_evaluator(), run.accelerator, run.processor,
            run.args.panoptic_threshold, run.unwrapped.config.stuff_label_ids,
            run.unwrapped.config.coco_category_ids,
        )  # fmt: skip
        stats = panoptic_summary(stats) if stats is not None else None
        headline = ("PQ", "SQ")
    else:
        stats = evaluate_model(
            run.unwrapped, run.eval_loader, run.make_evaluator(), run.accelerator, run.processor,
            run.args.eval_top_k,
        )  # fmt: skip
        headline = ("AP", "AP50")
    state = run.state
    if run.is_main and stats is not None:
        state.best_ap = max(state.best_ap, stats[headline[0]])
        minutes = (time.monotonic() - run.start_time) / 60
        run.log.write(
            {"event": "eval", "step": state.global_step, "epoch": state.epoch, "minutes": minutes, **stats}
        )
        run.accelerator.log({f"eval/{k}": v for k, v in stats.items()}, step=state.global_step)
        logger.info("Step %d: %s %.4f %s %.4f", state.global_step, headline[0], stats[headline[0]],
                    headline[1], stats[headline[1]])  # fmt: skip
    return stats


def panoptic_summary(results: dict[str, Any]) -> dict[str, float]:
    """PanopticEvaluator results as flat stats: PQ, SQ, RQ (all) and PQ_th, SQ_th, RQ_th, PQ_st, ..."""
    stats = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for name in ("pq", "sq", "rq"):
            stats[name.upper() + suffix] = float(results[group][name])
    return stats


def conclude(run: TrainingRun, stop_reason: str, stop: StopRequest) -> TrainingResult:
    """Interrupted: a checkpoint to resume from. Finished: a checkpoint, the final evaluation, the model."""
    state = run.state
    path = save(run)
    stats = None
    if stop_reason in ("signal", "stop_after_steps", "nonfinite"):
        run.log.write(
            {"event": "stopped", "reason": stop_reason, "step": state.global_step, "checkpoint": str(path)}
        )
    else:
        stats = run_evaluation(run)
        save_final_model(run, stats)
        run.log.write({"event": "finished", "reason": stop_reason, "step": state.global_step, "stats": stats})
    run.accelerator.end_training()
    if stop_reason == "nonfinite":
        raise TrainingStopped(
            f"Training stopped at step {state.global_step}: {state.nonfinite_consecutive} consecutive updates had a "
            f"non-finite loss or gradient norm ({state.nonfinite_total} in total). The run has diverged: lower the "
            f"learning rate or use bf16/fp32. The last checkpoint is {path}."
        )
    exit_code = STOP_SIGNALS.get(stop.signal, 143) if stop_reason == "signal" else 0
    return TrainingResult(
        run.output_dir, state.global_step, stats, stop_reason, exit_code, state.nonfinite_total
    )


__all__ = ["TrainingResult", "TrainingStopped", "train"]
