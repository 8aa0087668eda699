"""The training loop with Accelerate: the paper's recipe, from one CPU to many GPUs, resumable exactly.

One optimizer update = `gradient_accumulation_steps` batches per process. The learning-rate schedule
is per update (optional linear warm-up, then x0.1 after `lr_drop` of the updates, the paper's StepLR).
Every batch agrees across processes, in one small all-reduce, on whether its loss is finite and
whether a stop was requested (SIGTERM, Ctrl-C), so all processes skip or stop at the same update and
DDP never waits on a process that left.
"""

from __future__ import annotations

import json
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..configuration_detr import HfDetrConfig
from ..data import (
    DetectionCollator,
    DetectionDataset,
    category_ids,
    class_names,
    detr_train_transforms,
    detr_val_size,
    load_detection_dataset,
)
from ..evaluation import CocoEvaluator, label_to_category_mapping, split_to_coco
from ..evaluation.loop import evaluate_model
from ..image_processing_detr import HfDetrImageProcessor
from ..loss_detr import NonFiniteMatchingCostError
from ..modeling_detr import HfDetrForObjectDetection
from .arguments import TrainingArguments
from .checkpoints import TrainingState, resolve_resume, save_checkpoint

logger = logging.getLogger("hf_detr.training")
EVAL_SPLIT_NAMES = ("val", "validation", "val2017", "test")
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


# ---------------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# ---------------------------------------------------------------------------------------------------
def build_model(args: TrainingArguments, names: list[str], coco_ids: list[int]) -> HfDetrForObjectDetection:
    """A model for the dataset's classes: from scratch, or fine-tuned from `init_from` with its class
    head re-initialised when the classes differ (everything else is kept)."""
    id2label = dict(enumerate(names))
    label2id = {name: index for index, name in id2label.items()}
    if args.init_from:
        source = HfDetrConfig.from_pretrained(args.init_from)
        same_classes = source.num_labels == len(names)
        model = HfDetrForObjectDetection.from_pretrained(
            args.init_from,
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=not same_classes,
        )
        if not same_classes:
            logger.info(
                "Fine-tuning %s: the class head was re-initialised for %d classes.",
                args.init_from,
                len(names),
            )
        model.config.coco_category_ids = list(coco_ids)
        model.config.auxiliary_loss = args.auxiliary_loss
        return model
    config = HfDetrConfig(
        backbone=args.backbone,
        use_pretrained_backbone=args.pretrained_backbone,
        dilation=args.dilation,
        d_model=args.d_model,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        encoder_attention_heads=args.attention_heads,
        decoder_attention_heads=args.attention_heads,
        encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim,
        num_queries=args.num_queries,
        dropout=args.dropout,
        attention_dropout=args.dropout,
        activation_dropout=args.dropout,
        freeze_backbone_batch_norm=args.freeze_backbone_batch_norm,
        trainable_backbone_layers=args.trainable_backbone_layers,
        auxiliary_loss=args.auxiliary_loss,
        eos_coefficient=args.eos_coefficient,
        id2label=id2label,
        label2id=label2id,
        coco_category_ids=list(coco_ids),
    )
    if args.pretrained_backbone:
        return _with_pretrained_backbone(config)
    return HfDetrForObjectDetection(config)


def _with_pretrained_backbone(config: HfDetrConfig) -> HfDetrForObjectDetection:
    try:
        return HfDetrForObjectDetection(config)
    except Exception as error:  # network errors come in many types (OSError, httpx, hub errors)
        raise RuntimeError(
            f"Could not get the pretrained {config.backbone} backbone weights from the Hugging Face Hub ({error}). "
            "Make the Hub reachable (and HF_HUB_OFFLINE unset), or train from scratch without --pretrained-backbone."
        ) from error


def parameter_groups(model: torch.nn.Module, args: TrainingArguments) -> list[dict[str, Any]]:
    """The official two groups: the backbone at `backbone_learning_rate`, everything else at `learning_rate`."""
    backbone, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if ".backbone." in f".{name}" else rest).append(parameter)
    groups = [{"params": rest, "lr": args.learning_rate}]
    if backbone and args.backbone_learning_rate > 0:
        groups.append({"params": backbone, "lr": args.backbone_learning_rate})
    return groups


def lr_factor(step: int, total_steps: int, warmup_steps: int, lr_drop: float) -> float:
    """Multiplier of the base learning rates at optimizer step `step` (0-based)."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    drop_step = max(1, round(total_steps * lr_drop))
    return factor * (0.1 if step >= drop_step else 1.0)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
class _StopRequest:
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


class _LogWindow:
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


class _JsonlLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _eval_split_name(splits: list[str], requested: str | None, train_split: str) -> str | None:
    if requested is not None:
        if requested not in splits:
            raise ValueError(f"Unknown eval split {requested!r}; the dataset has {sorted(splits)}.")
        return requested
    return next((name for name in EVAL_SPLIT_NAMES if name in splits and name != train_split), None)


def train(args: TrainingArguments) -> TrainingResult:
    """Train, evaluate and save as `args` says; returns where the model is and its final COCO stats."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    set_seed(args.seed)
    is_main = accelerator.is_main_process
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        args.save(output_dir / "training_args.json")
    log = _JsonlLog(output_dir / "log.jsonl", is_main)

    # data
    data = load_detection_dataset(args.dataset, bbox_format=args.bbox_format)
    if args.train_split not in data:
        raise ValueError(f"Unknown train split {args.train_split!r}; the dataset has {sorted(data)}.")
    train_split = data[args.train_split]
    eval_name = _eval_split_name(list(data), args.eval_split, args.train_split)
    names, coco_ids = class_names(train_split), category_ids(train_split)

    model = build_model(args, names, coco_ids)
    if not model.config.freeze_backbone_batch_norm and accelerator.num_processes > 1:
        if accelerator.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm runs on CUDA only
            logger.warning("BatchNorm statistics stay per process: SyncBatchNorm needs CUDA devices.")
    processor = HfDetrImageProcessor(size=detr_val_size(args.image_scale))
    train_dataset = DetectionDataset(
        train_split,
        transforms=detr_train_transforms(args.image_scale, args.augmentation),
        seed=args.seed,
        on_error="replace",
    )
    threads = 1 if args.num_workers else None
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        collate_fn=DetectionCollator(processor, do_resize=False, num_threads=threads),
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched (exact resume)
    )
    eval_loader = evaluator_factory = None
    if eval_name is not None:
        eval_loader = DataLoader(
            DetectionDataset(data[eval_name]),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            collate_fn=DetectionCollator(processor, num_threads=threads),
        )
        ground_truth = split_to_coco(data[eval_name])
        mapping = label_to_category_mapping(model.config.id2label, ground_truth["categories"], coco_ids)

        def evaluator_factory() -> CocoEvaluator:
            return CocoEvaluator(ground_truth, mapping)

    optimizer = torch.optim.AdamW(
        parameter_groups(model, args), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    prepared = accelerator.prepare(model, optimizer, train_loader, *([eval_loader] if eval_loader else []))
    model, optimizer, train_loader = prepared[:3]
    eval_loader = prepared[3] if eval_loader else None
    updates_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
    total_steps = args.max_steps or args.epochs * updates_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, args.warmup_steps, args.lr_drop)
    )
    state = TrainingState()
    accelerator.register_for_checkpointing(scheduler, state)
    checkpoints = output_dir / "checkpoints"
    if args.resume_from_checkpoint:
        path = resolve_resume(args.resume_from_checkpoint, checkpoints)
        accelerator.load_state(str(path))
        logger.info("Resumed from %s at step %d (epoch %d).", path, state.global_step, state.epoch)
    if args.report_to:
        accelerator.init_trackers(
            "hf_detr", config={k: v for k, v in args.to_dict().items() if not isinstance(v, list)}
        )

    unwrapped = accelerator.unwrap_model(model)
    run_start = time.monotonic()

    def is_eval_step() -> bool:
        return bool(args.eval_steps) and state.global_step % args.eval_steps == 0

    def run_evaluation() -> dict[str, float] | None:
        if eval_loader is None:
            return None
        stats = evaluate_model(
            unwrapped, eval_loader, evaluator_factory(), accelerator, processor, args.eval_top_k
        )
        if is_main and stats is not None:
            state.best_ap = max(state.best_ap, stats["AP"])
            minutes = (time.monotonic() - run_start) / 60
            log.write(
                {
                    "event": "eval",
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "minutes": minutes,
                    **stats,
                }
            )
            accelerator.log({f"eval/{k}": v for k, v in stats.items()}, step=state.global_step)
            logger.info("Step %d: AP %.4f AP50 %.4f", state.global_step, stats["AP"], stats["AP50"])
        return stats

    stop = _StopRequest()
    start_time = time.monotonic()
    stop_reason, exit_code, stats = "completed", 0, None
    window = _LogWindow()
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not is_main, desc="Training")
    with stop.installed():
        while state.global_step < total_steps and stop_reason == "completed":
            train_loader.set_epoch(state.epoch)
            train_dataset.set_epoch(state.epoch)
            skip = state.step_in_epoch * args.gradient_accumulation_steps
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            update_is_bad = False
            model.train()
            for batch in loader:
                with accelerator.accumulate(model):
                    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
                    try:
                        loss, loss_dict = unwrapped.loss_from_outputs(outputs, batch["labels"])
                        local_bad = (~torch.isfinite(loss.detach())).float()  # stays on the device
                    except NonFiniteMatchingCostError:
                        # keep every parameter in the graph so all processes run the same backward
                        loss = outputs.logits.sum() * 0 + outputs.pred_boxes.sum() * 0
                        loss_dict, local_bad = {}, loss.new_ones((), dtype=torch.float32)
                    out_of_time = (
                        args.time_limit_minutes is not None
                        and (time.monotonic() - start_time) / 60 >= args.time_limit_minutes
                    )
                    host_flags = local_bad.new_tensor([stop.signal is not None, out_of_time])
                    # one all-reduce and one host transfer per batch: every process takes the same decisions
                    flags = accelerator.reduce(
                        torch.cat([local_bad.reshape(1), host_flags]), reduction="sum"
                    ).tolist()
                    update_is_bad |= flags[0] > 0
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and not update_is_bad:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        update_is_bad = not bool(torch.isfinite(torch.as_tensor(grad_norm)))
                    if accelerator.sync_gradients and update_is_bad:
                        optimizer.zero_grad(set_to_none=True)
                    else:
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                window.add(
                    batch["pixel_values"].shape[0] * accelerator.num_processes,
                    None if update_is_bad else (loss, loss_dict),
                )
                if not accelerator.sync_gradients:
                    continue
                # one optimizer update is complete (skipped ones advance the schedule too)
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message=re.escape("Detected call of `lr_scheduler.step()`")
                    )
                    scheduler.step()
                state.global_step += 1
                state.step_in_epoch += 1
                progress.update(1)
                if update_is_bad:
                    state.nonfinite_total += 1
                    state.nonfinite_consecutive += 1
                    log.write(
                        {
                            "event": "skipped_nonfinite",
                            "step": state.global_step,
                            "total": state.nonfinite_total,
                        }
                    )
                    logger.warning(
                        "Step %d: non-finite loss or gradients, update skipped (%d in a row, %d in total).",
                        state.global_step, state.nonfinite_consecutive, state.nonfinite_total,
                    )  # fmt: skip
                else:
                    state.nonfinite_consecutive = 0
                update_is_bad = False
                if state.global_step % args.logging_steps == 0:
                    record = window.flush(optimizer, state, start_time, total_steps)
                    if record:
                        accelerator.log({f"train/{k}": v for k, v in record.items()}, step=state.global_step)
                        log.write({"event": "train", "step": state.global_step, **record})
                        progress.set_postfix(
                            loss=f"{record['loss']:.3f}", eta=f"{record['eta_minutes']:.1f}min"
                        )
                if state.nonfinite_consecutive >= args.max_consecutive_nonfinite:
                    stop_reason, exit_code = "nonfinite", 1
                elif flags[1] > 0:
                    stop_reason = "signal"
                    exit_code = STOP_SIGNALS.get(stop.signal, 143)
                elif args.stop_after_steps is not None and state.global_step >= args.stop_after_steps:
                    stop_reason = "stop_after_steps"
                elif flags[2] > 0:
                    stop_reason = "time_limit"
                if stop_reason != "completed" or state.global_step >= total_steps:
                    break
                if is_eval_step():
                    stats = run_evaluation()
                if args.save_steps and state.global_step % args.save_steps == 0:
                    save_checkpoint(accelerator, checkpoints, state.global_step, args.save_total_limit)
            else:  # the epoch ended before the last update
                state.epoch += 1
                state.step_in_epoch = 0
                if state.epoch % args.eval_epochs == 0 and not is_eval_step():  # else evaluated just now
                    stats = run_evaluation()
                save_checkpoint(accelerator, checkpoints, state.global_step, args.save_total_limit)
    progress.close()

    if stop_reason in ("signal", "stop_after_steps", "nonfinite"):
        path = save_checkpoint(accelerator, checkpoints, state.global_step, args.save_total_limit)
        log.write(
            {"event": "stopped", "reason": stop_reason, "step": state.global_step, "checkpoint": str(path)}
        )
        accelerator.end_training()
        if stop_reason == "nonfinite":
            raise TrainingStopped(
                f"Training stopped at step {state.global_step}: {state.nonfinite_consecutive} consecutive updates had a "
                f"non-finite loss or gradient norm ({state.nonfinite_total} in total). The run has diverged: lower the "
                f"learning rate or use bf16/fp32. The last checkpoint is {path}."
            )
        return TrainingResult(
            output_dir, state.global_step, None, stop_reason, exit_code, state.nonfinite_total
        )

    save_checkpoint(accelerator, checkpoints, state.global_step, args.save_total_limit)
    stats = run_evaluation()
    finish(args, accelerator, unwrapped, processor, stats, output_dir, data, eval_name, state.global_step)
    log.write({"event": "finished", "reason": stop_reason, "step": state.global_step, "stats": stats})
    accelerator.end_training()
    return TrainingResult(output_dir, state.global_step, stats, stop_reason, exit_code, state.nonfinite_total)


def finish(
    args: TrainingArguments,
    accelerator: Any,
    model: HfDetrForObjectDetection,
    processor: HfDetrImageProcessor,
    stats: dict[str, float] | None,
    output_dir: Path,
    data: Any,
    eval_name: str | None,
    steps_trained: int,
) -> None:
    """The end of a run: a code-carrying model directory with its processor and model card."""
    from ..hub import make_model_card, push_to_hub

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    model = _plain_batch_norm(model)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    metrics = {
        k: 100 * stats[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl") if stats and stats[k] >= 0
    }
    dataset_name = args.dataset or "hf-detr built-in shapes"
    card = make_model_card(
        model.config,
        args.push_to_hub or output_dir.name,
        metrics or None,
        base_model=args.init_from,
        datasets=[args.dataset] if args.dataset and not Path(args.dataset).exists() else [],
        dataset_name=dataset_name,
        dataset_split=eval_name or "validation",
        training_description=_training_description(args, steps_trained),
        evaluation_description=f"COCO box metrics on {dataset_name} ({eval_name}), computed by hf_detr at the end of training.",
    )
    card.save(output_dir / "README.md")
    if args.push_to_hub:
        push_to_hub(model, processor, args.push_to_hub, card, private=args.hub_private or None)


def _plain_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm (multi-process training) back to BatchNorm2d, the class the checkpoint builds."""
    for name, child in model.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            plain = torch.nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain)
        else:
            _plain_batch_norm(child)
    return model


def _training_description(args: TrainingArguments, steps_trained: int) -> str:
    start = f"fine-tuned from `{args.init_from}`" if args.init_from else "trained from scratch"
    drop = (
        f"the learning rate x0.1 after {args.lr_drop:.0%} of the planned steps"
        if args.lr_drop < 1
        else "no learning-rate drop"
    )
    augmentation = (
        "the paper's augmentation (flips, multi-scale resizing, random crops)"
        if args.augmentation == "paper"
        else "horizontal flips"
    )
    return (
        f"{start.capitalize()} with hf_detr (`hf-detr-train`, preset `{args.preset}`): AdamW, learning rate "
        f"{args.learning_rate:g} (backbone {args.backbone_learning_rate:g}), weight decay {args.weight_decay:g}, "
        f"batch {args.batch_size} per device x {args.gradient_accumulation_steps} accumulation, gradient clipping "
        f"{args.max_grad_norm:g}, {steps_trained} optimizer steps, warm-up {args.warmup_steps} steps, {drop}, "
        f"{augmentation} at image scale {args.image_scale:g}, mixed precision {args.mixed_precision}. "
        "All settings: training_args.json."
    )


__all__ = ["TrainingResult", "TrainingStopped", "build_model", "lr_factor", "parameter_groups", "train"]
