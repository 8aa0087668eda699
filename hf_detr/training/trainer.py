"""The training loop with Accelerate: the paper's recipe, from one CPU to many GPUs, resumable exactly.

One optimizer update = `gradient_accumulation_steps` batches per process. The learning-rate schedule
is per update (optional linear warm-up, then x0.1 after `lr_drop` of the updates, the paper's StepLR).
Every batch agrees across processes, in one small all-reduce, on whether its loss is finite and
whether a stop was requested (SIGTERM, Ctrl-C), so all processes skip or stop at the same update and
DDP never waits on a process that left.

The run kept at the end: with `--ema` the moving average of the weights (updated after every update,
evaluated and saved instead of them); every evaluation's `metric_for_best_model` is tracked, the best
one's checkpoint is kept, its weights become the final model (`load_best_model_at_end`), and
`early_stopping_patience` evaluations without improvement end the run. All of it lives in the
checkpointed `TrainingState`, so a resumed run takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from ..evaluation.per_class import format_per_class
from ..evaluation.report import write_evaluation_report
from ..loss_detr import NonFiniteMatchingCostError
from .arguments import TrainingArguments, best_metric
from .checkpoints import checkpoint_path, disk_full_errors, save_checkpoint, write_training_state
from .final_model import save_final_model
from .setup import TrainingRun, setup_run

EVAL_REPORT_DIR = "eval"  # OUTPUT_DIR/eval: the latest evaluation's eval_results.json and plots
logger = logging.getLogger("hf_detr.training")
STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130}
INTERRUPTIONS = ("signal", "stop_after_steps", "nonfinite")  # a checkpoint to resume from, no final model


@dataclass
class TrainingResult:
    output_dir: Path
    global_step: int
    stats: dict[str, float] | None  # the evaluation of the saved model (the best one's by default)
    # "completed", "early_stopping", "time_limit" (finished), "stop_after_steps", "signal", "nonfinite"
    stop_reason: str
    exit_code: int = 0
    nonfinite_steps: int = 0
    best_step: int | None = None  # the best evaluation's step (metric_for_best_model)
    best_metric: float | None = None


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
    stop = StopRequest()
    with stop.installed():
        stop_reason = resume_decisions(run)
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
                stop_reason = evaluate_and_save_on_step(run)
                if stop_reason is not None:
                    break
            else:
                stop_reason = end_epoch(run)
    run.progress.close()
    return conclude(run, stop_reason or "completed", stop)


def train_batch(run: TrainingRun, batch: dict[str, Any], stop: StopRequest) -> list[float]:
    """Forward, loss, backward and (at the end of an update) the optimizer step of one batch.

    Returns the flags every process agreed on: [non-finite losses, stop signals, out of time] (sums
    over processes). An update with a non-finite loss or gradient norm anywhere is skipped everywhere.
    """
    args, accelerator = run.args, run.accelerator
    with accelerator.accumulate(run.model):
        if run.batch_norm:
            run.batch_norm.snapshot()
        outputs = run.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        try:
            loss, loss_dict = run.loss(outputs, batch["labels"])
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
        if flags[0] > 0 and run.batch_norm:  # after the backward, which checks they were not changed
            run.batch_norm.restore()  # the statistics this forward changed (perhaps to NaN)
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
    if run.ema is not None and not run.update_is_bad:  # a skipped update changed no weight
        run.ema.update(run.unwrapped)
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


def evaluate_and_save_on_step(run: TrainingRun) -> str | None:
    """Evaluation every `eval_steps` and a checkpoint every `save_steps` updates and at a new best
    model; "early_stopping" when the patience ran out (the run's end saves then)."""
    state = run.state
    if is_eval_step(run):
        evaluate_and_track(run)
        if (reason := early_stopping(run)) is not None:
            return reason
    if (run.args.save_steps and state.global_step % run.args.save_steps == 0) or is_new_best(run):
        save(run)
    return None


def end_epoch(run: TrainingRun) -> str | None:
    """The epoch ended before the last update: evaluate every `eval_epochs` epochs, save (or stop early)."""
    run.state.epoch += 1
    run.state.step_in_epoch = 0
    every = run.args.eval_epochs
    if every and run.state.epoch % every == 0 and not is_eval_step(run):  # else evaluated just now
        evaluate_and_track(run)
        if (reason := early_stopping(run)) is not None:
            return reason
    save(run)
    return None


def resume_decisions(run: TrainingRun) -> str | None:
    """A resumed run first takes the decisions its interruption skipped: the evaluation of the step it
    stopped at (so the best model and the patience match an uninterrupted run), or it stays stopped
    when it had stopped early."""
    state = run.state
    if state.global_step == 0:
        return None
    if is_eval_step(run) and state.last_eval_step < state.global_step < run.total_steps:
        return evaluate_and_save_on_step(run)
    return early_stopping(run)


def save(run: TrainingRun) -> Path:
    """A checkpoint of this step (with the progress, the schedule and the EMA weights), pruned to the
    last K and the best model's."""

    def write_run_state(folder: Path) -> None:
        write_training_state(folder, run.state, run.scheduler)
        if run.ema is not None:
            run.ema.save(folder)

    return save_checkpoint(
        run.accelerator, run.checkpoints, run.state.global_step, run.args.save_total_limit,
        write_run_state, protect=run.state.best_step,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The run they keep: the best model and early stopping
# ---------------------------------------------------------------------------------------------------
def evaluate_and_track(run: TrainingRun, report: bool = True) -> dict[str, Any] | None:
    """Evaluate (the EMA weights with --ema), share the stats with every process, and update the best
    model and the early-stopping count, the same on every process; `report=False` leaves the report
    for the caller to write (`write_report`)."""
    run.last_evaluator = None  # set by this evaluation (main process, detection)
    stats = run_evaluation(run)
    if report:
        write_report(run)
    if run.eval_loader is not None and run.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        stats = broadcast_object_list([stats])[0]  # computed on the main process only
    run.last_stats = stats
    run.state.last_eval_step = run.state.global_step
    if stats is not None:
        track_best(run, stats)
    return stats


def track_best(run: TrainingRun, stats: dict[str, Any]) -> None:
    """A strictly better `metric_for_best_model` makes this step the best model; one better by more
    than `early_stopping_threshold` resets the patience (transformers' EarlyStoppingCallback)."""
    args, state = run.args, run.state
    name = best_metric(args)
    value = float(stats[name])
    gain = math.inf if state.best_metric is None else value - state.best_metric
    gain = gain if args.greater_is_better else -gain
    if gain > 0:
        state.best_metric, state.best_step = value, state.global_step
        state.best_stats = {key: float(v) for key, v in stats.items() if isinstance(v, (int, float))}
        if run.is_main:
            logger.info("Step %d: new best %s %.4f.", state.global_step, name, value)
    state.evals_without_improvement = (
        0 if gain > args.early_stopping_threshold else state.evals_without_improvement + 1
    )


def is_new_best(run: TrainingRun) -> bool:
    """This step was evaluated just now and is the best model so far (its checkpoint is kept)."""
    state = run.state
    return state.best_step == state.global_step == state.last_eval_step


def early_stopping(run: TrainingRun) -> str | None:
    """Stop ("early_stopping") once `early_stopping_patience` evaluations in a row did not improve."""
    patience, state = run.args.early_stopping_patience, run.state
    if patience is None or state.evals_without_improvement < patience:
        return None
    if run.is_main:
        logger.warning(
            "Stopped early at step %d: %s has not improved for %d evaluations (best %.4f at step %s).",
            state.global_step, best_metric(run.args), state.evals_without_improvement, state.best_metric,
            state.best_step,
        )  # fmt: skip
    return "early_stopping"


def keep_best_model(run: TrainingRun, stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """With `load_best_model_at_end`, the best evaluation's weights (the EMA's with --ema) become the
    final model's (main process, which saves it); returns the stats of the weights saved."""
    state = run.state
    if not run.args.load_best_model_at_end or state.best_step in (None, state.global_step):
        return stats
    checkpoint = checkpoint_path(run.checkpoints, state.best_step)
    name = best_metric(run.args)
    if not checkpoint.is_dir():  # checked on every process: none waits for one that failed
        raise FileNotFoundError(
            f"The best model's checkpoint {checkpoint} ({name} {state.best_metric:.4f}) is missing; "
            "restore it or train with --load-best-model-at-end false."
        )
    if run.is_main:
        if run.ema is not None:
            run.ema.load(checkpoint)
        else:
            load_model(run.unwrapped, checkpoint / "model.safetensors")  # read on the CPU, copied in
        logger.info(
            "The final model is the best one: step %d, %s %.4f.", state.best_step, name, state.best_metric
        )
    run.log.write(
        {"event": "best_model", "step": state.best_step, "metric": name, "value": state.best_metric,
         "checkpoint": str(checkpoint)}
    )  # fmt: skip
    return state.best_stats


def write_report(run: TrainingRun) -> None:
    """OUTPUT_DIR/eval/: eval_results.json (the 12 stats and the per-class table), the confusion
    matrix (JSON, PNG) and the precision-recall curves of the latest evaluation; the table is logged.
    The report is a by-product: an error writing it is logged (and in log.jsonl), never ends the run."""
    step, directory = run.state.global_step, run.output_dir / EVAL_REPORT_DIR
    if run.last_evaluator is None:
        return
    try:
        extra = {"step": step, "epoch": run.state.epoch}
        record = write_evaluation_report(run.last_evaluator, directory, extra=extra)
        logger.info("Per-class results (step %d):\n%s", step, format_per_class(record["per_class"]))
    except Exception as error:  # a plot or table bug must not lose a trained model
        logger.warning(
            "Step %d: the evaluation report in %s could not be written (%s: %s); training goes on "
            "without it.", step, directory, type(error).__name__, error,
        )  # fmt: skip
        logger.debug("The evaluation report's error:", exc_info=True)
        run.log.write({"event": "report_failed", "step": step, "error": f"{type(error).__name__}: {error}"})


def run_evaluation(run: TrainingRun) -> dict[str, Any] | None:
    """The task's stats (COCO's, or PQ for panoptic) of the evaluated weights (`run.eval_model`: the EMA's
    with --ema) on the evaluation split (main process; None elsewhere or without one), logged."""
    if run.eval_loader is None:
        return None
    evaluator = run.make_evaluator()
    results = run.task.evaluate(
        run.eval_model, run.eval_loader, evaluator, run.accelerator, run.processor,
        top_k=run.args.eval_top_k, threshold=run.args.panoptic_threshold,
    )  # fmt: skip
    stats = run.task.flat_stats(results) if results is not None else None
    state = run.state
    if run.is_main and stats is not None and run.task.per_class_report:
        run.last_evaluator = evaluator  # its report: `write_report`
    if run.is_main and stats is not None:
        minutes = (time.monotonic() - run.start_time) / 60
        run.log.write(
            {"event": "eval", "step": state.global_step, "epoch": state.epoch, "minutes": minutes, **stats}
        )
        run.accelerator.log({f"eval/{k}": v for k, v in stats.items()}, step=state.global_step)
        headline = run.task.metric_names[:2]  # AP, AP50 / PQ, SQ
        logger.info("Step %d: %s %.4f %s %.4f", state.global_step, headline[0], stats[headline[0]],
                    headline[1], stats[headline[1]])  # fmt: skip
    return stats


def conclude(run: TrainingRun, stop_reason: str, stop: StopRequest) -> TrainingResult:
    """Interrupted: a checkpoint to resume from. Finished: the final evaluation, a checkpoint, and the
    model (the best evaluation's with `load_best_model_at_end`)."""
    state = run.state
    stats = None
    if stop_reason in INTERRUPTIONS:
        path = save(run)
        run.log.write(
            {"event": "stopped", "reason": stop_reason, "step": state.global_step, "checkpoint": str(path)}
        )
    else:
        just_evaluated = state.last_eval_step == state.global_step and run.last_stats is not None
        stats = run.last_stats if just_evaluated else evaluate_and_track(run, report=False)
        path = save(run)
        stats = keep_best_model(run, stats)
        with disk_full_errors(run.output_dir, "the final model", run.checkpoints):
            save_final_model(run, stats, stop_reason)
        if not just_evaluated:
            write_report(run)  # after the final model: a reporting error never loses the run
        run.log.write(
            {"event": "finished", "reason": stop_reason, "step": state.global_step, "stats": stats,
             **best_record(run)}
        )  # fmt: skip
    run.accelerator.end_training()
    if stop_reason == "nonfinite":
        raise TrainingStopped(
            f"Training stopped at step {state.global_step}: {state.nonfinite_consecutive} consecutive updates had a "
            f"non-finite loss or gradient norm ({state.nonfinite_total} in total). The run has diverged: lower the "
            f"learning rate or use bf16/fp32. The last checkpoint is {path}."
        )
    exit_code = STOP_SIGNALS.get(stop.signal, 143) if stop_reason == "signal" else 0
    return TrainingResult(
        run.output_dir, state.global_step, stats, stop_reason, exit_code, state.nonfinite_total,
        state.best_step, state.best_metric,
    )  # fmt: skip


def best_record(run: TrainingRun) -> dict[str, Any]:
    """The best evaluation and the step whose weights the final model has, for log.jsonl."""
    state = run.state
    if state.best_step is None:
        return {}
    kept = state.best_step if run.args.load_best_model_at_end else state.global_step
    best = {"step": state.best_step, "metric": best_metric(run.args), "value": state.best_metric}
    return {"best": best, "model_step": kept, "ema": run.ema is not None}


__all__ = ["TrainingResult", "TrainingStopped", "train"]
