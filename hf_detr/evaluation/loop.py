"""Running a model over an evaluation split, on one process or many (Accelerate)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..image_processing_detr import HfDetrImageProcessor
from .coco_evaluator import CocoEvaluator


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataloader: Any,
    evaluator: CocoEvaluator,
    accelerator: Any = None,
    processor: HfDetrImageProcessor | None = None,
    top_k: int | None = None,
    progress: bool = True,
) -> dict[str, float] | None:
    """COCO stats of `model` on the batches of `dataloader` (from `DetectionCollator`).

    Under Accelerate every process runs its shard; the post-processed detections are gathered with
    `gather_for_metrics`, which drops the duplicates the distributed sampler adds to even out the
    last batch, so each image is counted once. The main process computes and returns the stats; the
    others return None.
    """
    processor = processor or HfDetrImageProcessor()
    is_main = accelerator is None or accelerator.is_main_process
    was_training = model.training
    model.eval()
    for batch in tqdm(dataloader, desc="Evaluating", disable=not (progress and is_main)):
        items = []
        if batch:  # empty when every image of the batch failed to decode
            outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
            sizes = torch.stack([label["orig_size"] for label in batch["labels"]])
            detections = processor.post_process_object_detection(outputs, 0.0, sizes, top_k=top_k)
            items = [
                (int(label["image_id"]), {key: value.cpu() for key, value in detection.items()})
                for label, detection in zip(batch["labels"], detections)
            ]
        if accelerator is not None and accelerator.num_processes > 1:
            items = accelerator.gather_for_metrics(items, use_gather_object=True)
        if is_main and items:
            evaluator.update([image_id for image_id, _ in items], [detection for _, detection in items])
    if was_training:
        model.train()
    return evaluator.compute() if is_main else None


__all__ = ["evaluate_model"]
