"""`--streaming`: training and evaluation loaders over a streamed source (Hub, parquet, arrow).

Each process reads its part of the stream (`split_dataset_by_node`); the training stream is shuffled
by shard order only (hf_detr.data.streaming), so a resumed run continues at the exact record where it
stopped: the position is the `step_in_epoch` of the saved training state (every batch of an epoch but
its last is full). The schedule's length is `--max-steps`, or the epochs times the updates of a pass
when the source knows its number of rows (`info.splits[...].num_examples`); every process then reads
ceil(rows / processes) samples an epoch (its stream read again from the start if it ends sooner).
Without a known length, one process makes an epoch of one pass; several make the whole schedule one
epoch (each reads its stream round and round), so that they all step together.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..data.collate import DetectionCollator
from ..data.streaming import StreamingDetectionDataset, StreamingLoader, streaming_eval_loader
from ..data.transforms import detr_train_transforms

logger = logging.getLogger("hf_detr.training")


def stream_length(split: Any) -> int | None:
    """The number of rows the streamed source declares for this split, None when it does not."""
    splits = getattr(split.info, "splits", None)
    name = str(split.split) if getattr(split, "split", None) is not None else None
    if not splits or name not in splits:
        return None
    return splits[name].num_examples or None


def check_streaming(args: Any, split: Any) -> int | None:
    """The train split's declared length; a clear error when neither it nor --max-steps sets the
    schedule, or for a panoptic run."""
    if args.task != "detection":
        raise ValueError("--streaming trains detection models only (--task detection).")
    rows = stream_length(split)
    if rows is None and args.max_steps is None:
        raise ValueError(
            f"--streaming: the source does not say how many rows its {split.split or 'train'!s} split has, so "
            "the schedule's length cannot be known: set --max-steps (optimizer steps)."
        )
    return rows


def streaming_loaders(
    args: Any, data: Any, train_name: str, eval_name: str | None, processor: Any, accelerator: Any
) -> tuple[StreamingDetectionDataset, StreamingLoader, StreamingLoader | None, int]:
    """The training dataset and loader, the evaluation loader (None without an eval split) and the
    schedule's total optimizer steps."""
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = check_streaming(args, data[train_name])
    per_update = args.batch_size * args.gradient_accumulation_steps
    if rows is not None:
        samples = math.ceil(rows / world)
    elif world > 1:
        samples = args.max_steps * per_update  # the whole schedule as one epoch, the same everywhere
        logger.info("Streaming a split of unknown length to %d processes: the schedule is one epoch.", world)
    else:
        samples = None  # an epoch is one pass
    batches = None if samples is None else math.ceil(samples / args.batch_size)
    total_steps = args.max_steps or args.epochs * max(
        1, math.ceil(batches / args.gradient_accumulation_steps)
    )
    threads = 1 if args.num_workers else None
    train_dataset = StreamingDetectionDataset(
        data[train_name], detr_train_transforms(args.image_scale, args.augmentation), seed=args.seed,
        on_error="replace", rank=rank, world_size=world, shuffle=True, samples_per_epoch=samples,
        batch_size=args.batch_size,
    )  # fmt: skip
    train_loader = StreamingLoader(
        train_dataset, DetectionCollator(processor, do_resize=False, num_threads=threads), accelerator.device,
        num_workers=args.num_workers, seed=args.seed, batches_per_epoch=batches, accelerator=accelerator,
    )  # fmt: skip
    eval_loader = None
    if eval_name is not None:
        eval_loader = streaming_eval_loader(
            data[eval_name], args.batch_size, args.num_workers, accelerator, DetectionCollator(processor, num_threads=threads)
        )  # fmt: skip
    return train_dataset, train_loader, eval_loader, total_steps


__all__ = [
    "StreamingLoader",
    "check_streaming",
    "stream_length",
    "streaming_eval_loader",
    "streaming_loaders",
]
