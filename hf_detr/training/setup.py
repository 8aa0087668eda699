"""Everything a training run needs before its first update: Accelerate, data, model, optimizer, schedule.

`setup_run(args)` returns a [`TrainingRun`] with every object prepared by Accelerate and the state of
a resumed run loaded; the loop in `trainer.py` only reads and advances it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import DetectionDataset, detr_train_transforms, detr_val_size
from ..image_processing_detr import HfDetrImageProcessor, normalize_size
from ..modeling_detr import HfDetrForObjectDetection
from ..processes import warn_fewer_processes
from .arguments import BUILTIN_PRESET, TrainingArguments
from .batch_norm import BatchNormStatistics
from .checkpoint_files import check_checkpoint_files
from .checkpoints import TrainingState, read_training_state, recover_checkpoints, resolve_resume
from .ema import EMA_FILE, ModelEma
from .logs import JsonlLog, LogWindow
from .loss import training_loss
from .models import build_model
from .streaming import StreamingLoader, streaming_loaders
from .tasks import DetectionTraining, PanopticTraining, task_for

logger = logging.getLogger("hf_detr.training")
TRAIN_SPLIT_NAMES = ("train", "train2017")
EVAL_SPLIT_NAMES = ("val", "validation", "valid", "val2017", "test")


# ---------------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# ---------------------------------------------------------------------------------------------------
def training_processor(args: TrainingArguments) -> tuple[float, HfDetrImageProcessor]:
    """The run's image scale and evaluation processor. A fine-tuning run takes the `init_from`
    checkpoint's processor (its size, normalization, padding), at its scale unless `image_scale` is
    set; a scale other than the checkpoint's is announced, since fine-tuning at another resolution
    loses most of what the checkpoint learned until it adapts."""
    saved = _saved_processor(args.init_from) if args.init_from else None
    saved_scale = _processor_scale(saved)
    if saved is None or saved_scale is None:
        scale = 1.0 if args.image_scale is None else args.image_scale
        return scale, HfDetrImageProcessor(size=detr_val_size(scale))
    size = (
        f"shorter side {saved.size['shortest_edge']} px, longer at most {saved.size.get('longest_edge')} px"
    )
    if args.image_scale is None:
        logger.info(
            "Fine-tuning at %s's resolution (%s: image scale %.4g); --image-scale changes it.",
            args.init_from, size, saved_scale,
        )  # fmt: skip
        return saved_scale, saved
    if abs(args.image_scale - saved_scale) > 1e-3 * saved_scale:
        new = detr_val_size(args.image_scale)
        logger.warning(
            "--image-scale %g trains at shorter side %d px, longer at most %d px; %s was trained at %s "
            "(image scale %.4g).", args.image_scale, new["shortest_edge"], new["longest_edge"],
            args.init_from, size, saved_scale,
        )  # fmt: skip
    saved.size = normalize_size(detr_val_size(args.image_scale))
    return args.image_scale, saved


def _saved_processor(checkpoint: str) -> HfDetrImageProcessor | None:
    """The checkpoint's saved image processor, or None (with a line saying so) when it has none."""
    try:
        return HfDetrImageProcessor.from_pretrained(checkpoint)
    except OSError:
        logger.info(
            "%s has no preprocessor_config.json: the run's --image-scale sets the image sizes.", checkpoint
        )
        return None


def _processor_scale(processor: HfDetrImageProcessor | None) -> float | None:
    """The image scale of a processor's `size` relative to the paper's 800 px shorter side."""
    if processor is None or not processor.do_resize or "shortest_edge" not in (processor.size or {}):
        return None
    return processor.size["shortest_edge"] / detr_val_size()["shortest_edge"]


def check_builtin_detector(args: TrainingArguments) -> None:
    """The built-in panoptic and fine-tuning presets start from the main job's output: a clear error
    when it is absent."""
    starts = {"builtin-panoptic": "trains a mask head on", "builtin-finetune": "fine-tunes"}
    expected = args.preset in starts and args.init_from == BUILTIN_PRESET["output_dir"]
    if expected and not (Path(args.init_from) / "config.json").is_file():
        raise FileNotFoundError(
            f"The {args.preset} preset {starts[args.preset]} the main job's detector, expected in "
            f"{args.init_from}/ (relative to this directory). Run `hf-detr-train` first, or pass "
            "--init-from DIR (another checkpoint, or none to train from scratch)."
        )


def parameter_groups(model: torch.nn.Module, args: TrainingArguments) -> list[dict[str, Any]]:
    """The official two groups: the backbone at `backbone_learning_rate`, everything else at
    `learning_rate`; a segmentation model's new mask head (`bbox_attention`, `mask_head`) at
    `mask_head_learning_rate` when it is set."""
    backbone, mask_head, rest = [], [], []
    mask_rate = args.mask_head_learning_rate
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if ".backbone." in f".{name}":
            backbone.append(parameter)
        elif mask_rate is not None and name.startswith(MASK_HEAD_PREFIXES):
            mask_head.append(parameter)
        else:
            rest.append(parameter)
    groups = [{"params": rest, "lr": args.learning_rate}]
    if backbone and args.backbone_learning_rate > 0:
        groups.append({"params": backbone, "lr": args.backbone_learning_rate})
    if mask_head:
        groups.append({"params": mask_head, "lr": mask_rate})
    return groups


MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.")


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, lr_drop: float, schedule: str = "step"
) -> float:
    """Multiplier of the base learning rates at optimizer step `step` (0-based): a linear warm-up, then
    "step" (the paper's StepLR: x0.1 after `lr_drop` of the steps) or "cosine" (down to 0 at the end)."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "cosine":
        progress = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
        return factor * 0.5 * (1 + math.cos(math.pi * progress))
    drop_step = max(1, round(total_steps * lr_drop))
    return factor * (0.1 if step >= drop_step else 1.0)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """A run's prepared objects and its progress; `model` is Accelerate's wrapper, `unwrapped` ours."""

    args: TrainingArguments
    task: DetectionTraining | PanopticTraining  # what is task-specific: data, model, collators, evaluation
    accelerator: Any
    model: torch.nn.Module
    unwrapped: HfDetrForObjectDetection
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_dataset: DetectionDataset
    train_loader: Any
    eval_loader: Any | None
    make_evaluator: Callable[[], Any] | None  # a CocoEvaluator, or a PanopticEvaluator (panoptic)
    processor: HfDetrImageProcessor
    data: Any  # the DatasetDict
    eval_name: str | None
    state: TrainingState
    total_steps: int
    output_dir: Path
    log: JsonlLog
    window: LogWindow
    progress: Any  # tqdm
    start_time: float
    # the loss of (outputs, labels), its criterion built once for the run (training/loss.py)
    loss: Callable[[Any, list[dict[str, torch.Tensor]]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    update_is_bad: bool = False  # some batch of the update being accumulated had a non-finite loss
    ema: ModelEma | None = None  # --ema: the moving average of the weights
    batch_norm: BatchNormStatistics | None = None  # trainable BatchNorm's statistics (restored when bad)
    last_stats: dict[str, Any] | None = None  # the latest evaluation's stats (every process)
    last_evaluator: Any = None  # the latest COCO evaluation (main process), for its report and plots

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights evaluated and saved: the moving average with --ema, else the trained ones."""
        return self.ema.module if self.ema is not None else self.unwrapped

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"

    def epoch_batches(self) -> Iterable[dict[str, Any]]:
        """The current epoch's batches, from where a resumed run stopped."""
        self.train_loader.set_epoch(self.state.epoch)
        self.train_dataset.set_epoch(self.state.epoch)
        skip = self.state.step_in_epoch * self.args.gradient_accumulation_steps
        if isinstance(self.train_loader, StreamingLoader):  # --streaming: it skips the records read
            self.train_loader.skip_batches(skip)
            return self.train_loader
        return self.accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader


def setup_run(args: TrainingArguments) -> TrainingRun:
    """Accelerator, data, model, loaders, optimizer and schedule, prepared and (when asked) resumed."""
    from accelerate.utils import set_seed

    check_builtin_detector(args)
    scale, processor = training_processor(args)
    args = dataclasses.replace(args, image_scale=scale)
    output_dir = Path(args.output_dir)
    accelerator = _accelerator(args, output_dir)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        args.save(output_dir / "training_args.json")
    warn_fewer_processes(accelerator.num_processes)

    task = task_for(args.task)
    splits = SplitChoice(args.train_split, args.eval_split)  # checked before any split is converted
    data = _load_data(task, args, splits, accelerator)
    model = _synchronized_batch_norm(task.build_model(args, data[splits.train]), accelerator)
    train_dataset, train_loader, eval_loader, streamed_steps = _data_loaders(
        task, args, data, splits, processor, accelerator
    )
    make_evaluator = task.evaluator_factory(model.config, data[splits.eval]) if splits.eval else None

    optimizer = torch.optim.AdamW(
        parameter_groups(model, args), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    # before `prepare`: the copy must not share accelerate's mixed-precision forward with the model
    ema = ModelEma(model, args.ema_decay, args.ema_tau, accelerator.device) if args.ema else None
    model, optimizer, train_loader, eval_loader = _prepare(
        args, accelerator, model, optimizer, train_loader, eval_loader
    )
    if args.streaming:
        total_steps = streamed_steps
    else:
        updates_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
        total_steps = args.max_steps or args.epochs * updates_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, args.warmup_steps, args.lr_drop, args.lr_scheduler_type),
    )
    state = _resume(args, accelerator, output_dir, scheduler, ema, model)
    if args.report_to:
        accelerator.init_trackers("hf_detr", config=tracker_config(args))
    return TrainingRun(
        args=args,
        task=task,
        accelerator=accelerator,
        model=model,
        unwrapped=accelerator.unwrap_model(model),
        optimizer=optimizer,
        scheduler=scheduler,
        train_dataset=train_dataset,
        train_loader=train_loader,
        eval_loader=eval_loader,
        make_evaluator=make_evaluator,
        processor=processor,
        data=data,
        eval_name=splits.eval,
        state=state,
        total_steps=total_steps,
        output_dir=output_dir,
        log=JsonlLog(output_dir / "log.jsonl", accelerator.is_main_process),
        window=LogWindow(),
        progress=tqdm(
            total=total_steps,
            initial=state.global_step,
            disable=not accelerator.is_main_process,
            desc="Training",
        ),
        start_time=time.monotonic(),
        ema=ema,
        batch_norm=BatchNormStatistics(accelerator.unwrap_model(model)),
        loss=training_loss(accelerator.unwrap_model(model), args.one_to_many_repeats),
    )


def tracker_config(args: TrainingArguments) -> dict[str, Any]:
    """The settings as the trackers take them (no lists): the model's overrides under their field names."""
    settings = {**args.to_dict(), **args.config_overrides}
    return {key: value for key, value in settings.items() if not isinstance(value, (list, dict))}


def _data_loaders(
    task: DetectionTraining | PanopticTraining, args: TrainingArguments, data: Any, splits: SplitChoice,
    processor: HfDetrImageProcessor, accelerator: Any,
) -> tuple[Any, Any, Any, int | None]:  # fmt: skip
    """The training dataset, its loader, the evaluation loader (or None) and, for a stream, its step
    count (each process reads its part of a stream: training/streaming.py)."""
    if args.streaming:
        return streaming_loaders(args, data, splits.train, splits.eval, processor, accelerator)
    train_dataset = task.dataset(
        data[splits.train],
        transforms=detr_train_transforms(args.image_scale, args.augmentation),
        seed=args.seed,
        on_error="replace",
    )
    train_loader, eval_loader = _loaders(task, args, train_dataset, data, splits.eval, processor)
    return train_dataset, train_loader, eval_loader, None


def _prepare(
    args: TrainingArguments, accelerator: Any, model: Any, optimizer: Any, train_loader: Any, eval_loader: Any
) -> tuple[Any, Any, Any, Any]:
    """accelerate's `prepare` of the model, optimizer and loaders (a stream's loaders stay as they are)."""
    loaders = [] if args.streaming else [train_loader, *([eval_loader] if eval_loader else [])]
    prepared = accelerator.prepare(model, optimizer, *loaders)
    if args.streaming:
        return prepared[0], prepared[1], train_loader, eval_loader
    return prepared[0], prepared[1], prepared[2], prepared[3] if eval_loader else None


def _load_data(
    task: DetectionTraining | PanopticTraining, args: TrainingArguments, splits: SplitChoice, accelerator: Any
) -> Any:
    """The dataset of the run's task; one process per machine converts a folder into the cache, the
    others then read its cache."""
    with accelerator.local_main_process_first():
        return task.load_dataset(
            args.dataset, splits, bbox_format=args.bbox_format, streaming=args.streaming,
            stuff_categories=args.stuff_categories,
        )  # fmt: skip


def _resume(
    args: TrainingArguments,
    accelerator: Any,
    output_dir: Path,
    scheduler: Any,
    ema: ModelEma | None,
    model: torch.nn.Module,
) -> TrainingState:
    """The training state of the checkpoint to resume from (a fresh one without), the EMA weights too."""
    resume_path = _resume_path(args, accelerator, output_dir / "checkpoints")
    state = _resumed_state(accelerator, scheduler, resume_path)
    if ema is not None and resume_path is not None:
        _resume_ema(ema, accelerator.unwrap_model(model), resume_path)
    return state


def _accelerator(args: TrainingArguments, output_dir: Path) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to or None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


@dataclass
class SplitChoice:
    """The run's train and eval splits, picked from the dataset's split names when the loader calls it
    (before it converts anything): the names asked for, or the first of TRAIN_SPLIT_NAMES /
    EVAL_SPLIT_NAMES that exists (COCO's train2017 and val2017 included), announced in the log."""

    train: str | None = None
    eval: str | None = None

    def __call__(self, available: list[str]) -> list[str]:
        if self.train is None:
            self.train = next((name for name in TRAIN_SPLIT_NAMES if name in available), None)
            if self.train is None:
                raise ValueError(
                    f"The dataset has no split named {' or '.join(TRAIN_SPLIT_NAMES)}; its splits are "
                    f"{sorted(available)}: name the one to train on with --train-split."
                )
        elif self.train not in available:
            raise ValueError(f"Unknown train split {self.train!r}; the dataset has {sorted(available)}.")
        if self.eval is None:
            self.eval = next((n for n in EVAL_SPLIT_NAMES if n in available and n != self.train), None)
        elif self.eval not in available:
            raise ValueError(f"Unknown eval split {self.eval!r}; the dataset has {sorted(available)}.")
        evaluated = f"evaluating on split {self.eval!r}" if self.eval else "no evaluation split"
        logger.info("Training on split %r, %s (of %s).", self.train, evaluated, sorted(available))
        return [self.train] + ([self.eval] if self.eval else [])


def _synchronized_batch_norm(model: HfDetrForObjectDetection, accelerator: Any) -> HfDetrForObjectDetection:
    """Trainable BatchNorm shares its statistics across CUDA processes (SyncBatchNorm)."""
    if model.config.freeze_backbone_batch_norm or accelerator.num_processes == 1:
        return model
    if accelerator.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.warning(
        "BatchNorm statistics stay per process: SyncBatchNorm needs CUDA devices."
    )  # torch's is CUDA-only
    return model


def _loaders(
    task: DetectionTraining | PanopticTraining,
    args: TrainingArguments,
    train_dataset: DetectionDataset,
    data: Any,
    eval_name: str | None,
    processor: HfDetrImageProcessor,
) -> tuple[DataLoader, DataLoader | None]:
    threads = 1 if args.num_workers else None
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        collate_fn=task.collator(processor, train=True, num_threads=threads),
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched (exact resume)
    )
    if eval_name is None:
        return train_loader, None
    eval_loader = DataLoader(
        task.dataset(data[eval_name]),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=task.collator(processor, train=False, num_threads=threads),
    )
    return train_loader, eval_loader


def _resume_path(args: TrainingArguments, accelerator: Any, checkpoints: Path) -> Path | None:
    """The checkpoint to resume from (None: a new run), after repairing what a killed save left."""
    if not args.resume_from_checkpoint:
        return None
    if accelerator.is_main_process:
        recover_checkpoints(checkpoints)
    accelerator.wait_for_everyone()
    return resolve_resume(args.resume_from_checkpoint, checkpoints)


def _resumed_state(accelerator: Any, scheduler: Any, resume_path: Path | None) -> TrainingState:
    """The progress counters; when resuming, every file of `resume_path` checked (none can run code),
    then the progress and the schedule read from its JSON, the rest by accelerate's loaders."""
    state = TrainingState()
    if resume_path is not None:
        check_checkpoint_files(resume_path)
        read_training_state(resume_path, state, scheduler)
        accelerator.load_state(str(resume_path))
        logger.info("Resumed from %s at step %d (epoch %d).", resume_path, state.global_step, state.epoch)
    return state


def _resume_ema(ema: ModelEma, model: torch.nn.Module, checkpoint: Path) -> None:
    """The checkpoint's moving average, or (a checkpoint of a run without --ema) a new one from its weights."""
    if (checkpoint / EMA_FILE).is_file():
        ema.load(checkpoint)
    else:
        logger.warning(
            "%s has no %s (a run without --ema): the average starts from its weights.", checkpoint, EMA_FILE
        )
        ema.restart(model)


__all__ = ["TrainingRun", "build_model", "lr_factor", "parameter_groups", "setup_run"]
