"""The end of a run: a code-carrying model directory with its processor and model card, optionally pushed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .arguments import TrainingArguments, best_metric
from .query_groups import set_query_groups

if TYPE_CHECKING:
    from .setup import TrainingRun


def save_final_model(
    run: TrainingRun, stats: dict[str, float] | None, stop_reason: str = "completed"
) -> None:
    """`save_pretrained` of the evaluated weights (the EMA's with --ema) and the processor into the
    output directory, a model card, and `push_to_hub` when asked (main process; the others wait)."""
    from ..hub import make_model_card, push_to_hub

    args, output_dir = run.args, run.output_dir
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        return
    model = plain_batch_norm(run.eval_model)
    if model.config.num_query_groups > 1:  # the model evaluation runs, a plain DETR: group 0's queries
        model = set_query_groups(copy.deepcopy(model), 1)
    model.save_pretrained(output_dir)
    run.processor.save_pretrained(output_dir)
    panoptic = args.task == "panoptic"
    names = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st") if panoptic else ("AP", "AP50", "AP75", "APs", "APm", "APl")
    metrics = {k: 100 * stats[k] for k in names if stats and k in stats and stats[k] >= 0}
    dataset_name = args.dataset or (
        "hf-detr built-in shapes (panoptic)" if panoptic else "hf-detr built-in shapes"
    )
    what = "panoptic quality (PQ, SQ, RQ)" if panoptic else "COCO box metrics"
    card = make_model_card(
        model.config,
        args.push_to_hub or output_dir.name,
        metrics or None,
        base_model=args.init_from,
        datasets=[args.dataset] if args.dataset and not Path(args.dataset).exists() else [],
        dataset_name=dataset_name,
        dataset_split=run.eval_name or "validation",
        training_description=training_description(args, run.state.global_step)
        + kept_weights_description(run, stop_reason),
        evaluation_description=f"{what.capitalize()} on {dataset_name} ({run.eval_name}), computed by hf_detr at the end of training.",
    )
    card.save(output_dir / "README.md")
    if args.push_to_hub:
        push_to_hub(model, run.processor, args.push_to_hub, card, private=args.hub_private or None)


def plain_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm (multi-process training) back to BatchNorm2d, the class the checkpoint builds."""
    for name, child in model.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            plain = torch.nn.BatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain)
        else:
            plain_batch_norm(child)
    return model


def training_description(args: TrainingArguments, steps_trained: int) -> str:
    """The model card's "Training" paragraph."""
    start = f"fine-tuned from `{args.init_from}`" if args.init_from else "trained from scratch"
    if args.task == "panoptic":
        start += " as a panoptic model (mask head" + (", detector frozen)" if args.freeze_detector else ")")
    if args.lr_scheduler_type == "cosine":
        drop = "a cosine learning-rate decay to 0"
    elif args.lr_drop < 1:
        drop = f"the learning rate x0.1 after {args.lr_drop:.0%} of the planned steps"
    else:
        drop = "no learning-rate drop"
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


def kept_weights_description(run: TrainingRun, stop_reason: str) -> str:
    """The model card's sentences on which weights were kept: the moving average, the best step."""
    args, state = run.args, run.state
    parts = []
    if args.ema:
        parts.append(
            f"The weights are the exponential moving average of the trained ones (decay {args.ema_decay:g}, "
            f"ramped up over tau {args.ema_tau:g} updates)."
        )
    if stop_reason == "early_stopping":
        parts.append(
            f"Training stopped early at step {state.global_step}: {best_metric(args)} had not improved for "
            f"{args.early_stopping_patience} evaluations."
        )
    if args.load_best_model_at_end and state.best_step is not None:
        parts.append(
            f"The model is step {state.best_step}'s, the best {best_metric(args)} ({state.best_metric:.4f}) "
            f"of the evaluations on {run.eval_name}."
        )
    return "".join(" " + part for part in parts)


__all__ = ["kept_weights_description", "plain_batch_norm", "save_final_model", "training_description"]
