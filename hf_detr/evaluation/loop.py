"""Running a model over an evaluation split, on one process or many (Accelerate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..image_processing_detr import HfDetrImageProcessor
from .coco_evaluator import CocoEvaluator
from .coco_masks import (
    MaskEvaluator,
    encode_predictions,
    instance_predictions,
    mask_ground_truth_from_panoptic,
)
from .panoptic import PanopticEvaluator


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
    last batch, so each image is counted once. A loader with `gather_at_end` (a stream's: its parts may
    differ in length) is gathered once, after its last batch. The main process computes and returns the
    stats; the others return None.
    """
    processor = processor or HfDetrImageProcessor()
    gather_at_end, kept = bool(getattr(dataloader, "gather_at_end", False)), []
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
        if gather_at_end:
            kept.extend(items)
            continue
        if accelerator is not None and accelerator.num_processes > 1:
            items = accelerator.gather_for_metrics(items, use_gather_object=True)
        if is_main and items:
            evaluator.update([image_id for image_id, _ in items], [detection for _, detection in items])
    if gather_at_end:  # a stream: the processes' parts may differ in length, so one gather at the end
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            kept = gather_object(kept)
        if is_main and kept:
            evaluator.update([image_id for image_id, _ in kept], [detection for _, detection in kept])
    if was_training:
        model.train()
    return evaluator.compute() if is_main else None


@torch.no_grad()
def evaluate_panoptic_model(
    model: torch.nn.Module,
    dataloader: Any,
    evaluator: PanopticEvaluator,
    accelerator: Any = None,
    processor: HfDetrImageProcessor | None = None,
    threshold: float = 0.85,
    label_ids_to_fuse: Sequence[int] = (),
    label_to_category_id: Sequence[int] | None = None,
    progress: bool = True,
    mask_ap: InstanceMasks | None = None,
) -> dict[str, Any] | None:
    """PQ, SQ and RQ of a segmentation model on the batches of `dataloader` (`PanopticDataset` samples
    through `DetectionCollator(format="coco_panoptic", keep_annotations=True)`).

    Each prediction is `post_process_panoptic_segmentation` by the official DETR's rule (its
    `threshold` 0.85; the stuff classes `label_ids_to_fuse` merged) from the image's processed size
    (its unpadded input, as the official evaluation passes it) to its original size, scored
    against the annotation's PNG ids; ground-truth class ids become category ids through
    `label_to_category_id` (the evaluator maps the predictions' label ids its own way). Every process
    scores its shard; the statistics are then gathered (`PanopticEvaluator.synchronize`), and the main
    process returns `compute()` (the others None). With `mask_ap`, the instance view is scored too:
    its COCO mask stats are `results["mask_AP"]`.
    """
    processor = processor or HfDetrImageProcessor()
    is_main = accelerator is None or accelerator.is_main_process
    was_training = model.training
    model.eval()
    for batch in tqdm(dataloader, desc="Evaluating PQ", disable=not (progress and is_main)):
        if not batch:  # every image of the batch failed to decode
            continue
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        sizes = [tuple(int(v) for v in label["orig_size"]) for label in batch["labels"]]
        processed = [tuple(int(v) for v in label["size"]) for label in batch["labels"]]
        results = processor.post_process_panoptic_segmentation(
            outputs,
            threshold,
            label_ids_to_fuse=label_ids_to_fuse,
            target_sizes=sizes,
            processed_sizes=processed,
        )
        annotations = batch["annotations"]
        ground_truths = [_ground_truth(a, label_to_category_id) for a in annotations]
        evaluator.update(
            [int(a["image_id"]) for a in annotations],
            [{"segmentation": r["segmentation"].cpu(), "segments_info": r["segments_info"]} for r in results],
            ground_truths,
        )
        if mask_ap is not None:
            mask_ap.add(outputs, batch, ground_truths)
    if was_training:
        model.train()
    evaluator.synchronize()
    mask_stats = mask_ap.compute(accelerator) if mask_ap is not None else None
    if not is_main:
        return None
    results = evaluator.compute()
    return {**results, "mask_AP": mask_stats} if mask_ap is not None else results


class InstanceMasks:
    """COCO mask AP of the instance view beside PQ (paper section 4.4 reports both): per batch the
    ground-truth thing segments and every query's mask (official `PostProcessSegm`) as RLE; at the end
    gathered to the main process and scored by `MaskEvaluator` (faster-coco-eval, iouType "segm")."""

    def __init__(self, categories: Sequence[dict[str, Any]], label_to_category_id: Any) -> None:
        self.categories = list(categories)
        self.label_to_category_id = label_to_category_id
        self.items: list[tuple[dict, list[dict], dict]] = []  # (image, gt instances, encoded prediction)

    def add(self, outputs: Any, batch: dict[str, Any], ground_truths: list[dict[str, Any]]) -> None:
        labels = batch["labels"]
        predictions = encode_predictions(
            instance_predictions(
                outputs,
                [label["size"].tolist() for label in labels],
                [label["orig_size"].tolist() for label in labels],
                padded_size=batch["pixel_values"].shape[-2:],
            )
        )
        for annotation, ground_truth, label, prediction in zip(
            batch["annotations"], ground_truths, labels, predictions
        ):
            height, width = (int(v) for v in label["orig_size"])
            image = {"id": int(annotation["image_id"]), "height": height, "width": width}
            instances = mask_ground_truth_from_panoptic([image], [{**ground_truth, "image_id": image["id"]}],
                                                        self.categories)["annotations"]  # fmt: skip
            self.items.append((image, instances, prediction))

    def compute(self, accelerator: Any = None) -> dict[str, float] | None:
        items = self.items
        if accelerator is not None and accelerator.num_processes > 1:
            items = accelerator.gather_for_metrics(items, use_gather_object=True)
        if accelerator is not None and not accelerator.is_main_process:
            return None
        unique = {image["id"]: (image, instances, prediction) for image, instances, prediction in items}
        annotations = [dict(a) for _, instances, _ in unique.values() for a in instances]
        for number, annotation in enumerate(annotations, start=1):
            annotation["id"] = number
        things = [c for c in self.categories if int(c.get("isthing", 0)) == 1]
        ground_truth = {"images": [image for image, _, _ in unique.values()], "annotations": annotations,
                        "categories": things}  # fmt: skip
        evaluator = MaskEvaluator(ground_truth, self.label_to_category_id)
        evaluator.update(list(unique), [prediction for _, _, prediction in unique.values()])
        return evaluator.compute()


def _ground_truth(annotation: dict[str, Any], label_to_category_id: Sequence[int] | None) -> dict[str, Any]:
    """A `PanopticDataset` annotation (class ids) as the evaluator's ground truth (category ids)."""
    segments = [
        {**segment, "category_id": int(label_to_category_id[segment["category_id"]])}
        if label_to_category_id is not None
        else segment
        for segment in annotation["segments_info"]
    ]
    return {"segmentation": annotation["panoptic_image"], "segments_info": segments}


__all__ = ["InstanceMasks", "evaluate_model", "evaluate_panoptic_model"]
