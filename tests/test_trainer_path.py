"""transformers' object-detection task guide, walked with hf_detr: a model trained with hf-detr-train
loaded with new classes, the guide's transform and collate_fn, `Trainer`, and `CocoMetrics` as its
compute_metrics (hf_detr's COCO evaluator: no torchmetrics, no pycocotools)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset
from detr_testing import KNOWN_BOX, hub_detection_features, known_prediction_model
from transformers import AutoImageProcessor, AutoModelForObjectDetection, Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from hf_detr import HfDetrImageProcessor
from hf_detr.evaluation import CocoEvaluator, CocoMetrics

NEW_CLASSES = {0: "dog", 1: "fox"}


def guide_dataset(count: int = 4, foxes: bool = False) -> Dataset:
    """`count` 64x48 images in the cppe-5 layout, one "dog" each where the known model's query looks
    (KNOWN_BOX); with `foxes`, odd images have a "fox" too."""
    features = hub_detection_features(list(NEW_CLASSES.values()))
    cx, cy, w, h = KNOWN_BOX.tolist()
    dog = [(cx - w / 2) * 64, (cy - h / 2) * 48, w * 64, h * 48]
    rows = {"image_id": [], "image": [], "width": [64] * count, "height": [48] * count, "objects": []}
    for index in range(count):
        boxes, classes = [dog], [0]
        if foxes and index % 2:
            boxes, classes = [dog, [2.0, 2.0, 10.0, 8.0]], [0, 1]
        rows["image_id"].append(index)
        rows["image"].append(PIL.Image.new("RGB", (64, 48), (40 * index, 120, 90)))
        rows["objects"].append({"id": list(range(len(boxes))), "area": [b[2] * b[3] for b in boxes],
                                "bbox": boxes, "category": classes})  # fmt: skip
    return Dataset.from_dict(rows, features=features)


def guide_transform(processor):
    """The guide's `augment_and_transform_batch`, without the augmentation."""

    def transform(batch):
        images, annotations = [], []
        for image_id, image, objects in zip(batch["image_id"], batch["image"], batch["objects"]):
            images.append(np.array(image.convert("RGB")))
            annotations.append({"image_id": image_id, "annotations": [
                {"image_id": image_id, "category_id": c, "bbox": list(b), "iscrowd": 0, "area": a}
                for c, b, a in zip(objects["category"], objects["bbox"], objects["area"])]})  # fmt: skip
        return processor(images=images, annotations=annotations, return_tensors="pt")

    return transform


def collate_fn(batch):
    """The guide's collate_fn."""
    return {
        "pixel_values": torch.stack([x["pixel_values"] for x in batch]),
        "pixel_mask": torch.stack([x["pixel_mask"] for x in batch]),
        "labels": [x["labels"] for x in batch],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model as hf-detr-train leaves it: its own classes and COCO category ids."""
    directory = tmp_path_factory.mktemp("trained")
    model = known_prediction_model()
    model.config.coco_category_ids = [1, 2, 3, 4]
    model.save_pretrained(directory)
    HfDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)
    return directory


def guide_trainer(model, processor, tmp_path, **overrides) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, per_device_eval_batch_size=2,
        eval_do_concat_batches=False, remove_unused_columns=False, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0, **overrides,
    )  # fmt: skip
    data = guide_dataset().with_transform(guide_transform(processor))
    return Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collate_fn,
        compute_metrics=CocoMetrics(processor, id2label=model.config.id2label),
    )  # fmt: skip


def test_trainer_fine_tunes_new_classes_and_coco_metrics_score_the_evaluation_set(trained, tmp_path):
    processor = AutoImageProcessor.from_pretrained(trained)
    model = AutoModelForObjectDetection.from_pretrained(
        trained, id2label=NEW_CLASSES, label2id={v: k for k, v in NEW_CLASSES.items()},
        ignore_mismatched_sizes=True,
    )  # fmt: skip
    assert model.config.num_labels == 2 and model.config.coco_category_ids is None
    with torch.no_grad():  # as if fine-tuned already: its one query says "dog" where every dog is
        model.class_labels_classifier.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
    metrics = guide_trainer(model, processor, tmp_path).evaluate()
    assert metrics["eval_map"] == metrics["eval_map_dog"] == metrics["eval_map_50"] == pytest.approx(1.0)
    assert "eval_map_fox" not in metrics  # a class without objects in the evaluation set
    assert np.isfinite(metrics["eval_loss"])

    trainer = guide_trainer(model, processor, tmp_path, max_steps=2, learning_rate=1e-4)
    history = trainer.train()
    assert history.global_step == 2 and np.isfinite(history.training_loss)
    assert 0.0 <= trainer.evaluate()["eval_map"] <= 1.0


def test_coco_metrics_equal_the_evaluator_on_the_same_detections(trained):
    """CocoMetrics rebuilds the ground truth from the processor's labels (normalized by the unpadded
    size) at the original size: the stats equal CocoEvaluator's on the original annotations."""
    processor = HfDetrImageProcessor.from_pretrained(trained)
    data = guide_dataset(count=3, foxes=True)
    inputs = guide_transform(processor)(data[:])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 3, generator=generator)  # [B, N, K+1]
    boxes = torch.rand(3, 5, 4, generator=generator) * 0.5 + 0.2  # [B, N, 4]
    boxes[:, 0] = KNOWN_BOX + 0.01  # query 0 finds each dog, at IoU ~0.9
    labels = [{k: v.numpy() for k, v in label.items()} for label in inputs["labels"]]
    loss_dict = {"loss_ce": np.float32(1.0)}
    prediction = EvalPrediction(predictions=[(loss_dict, logits.numpy(), boxes.numpy())], label_ids=[labels])
    metrics = CocoMetrics(processor, id2label=NEW_CLASSES)(prediction)

    images = [{"id": i + 1, "width": 64, "height": 48} for i in range(3)]
    objects = [
        (i + 1, *o) for i, d in enumerate(data["objects"]) for o in zip(d["category"], d["bbox"], d["area"])
    ]
    annotations = [
        {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": 0}
        for n, (i, c, b, a) in enumerate(objects, start=1)
    ]
    categories = [{"id": k, "name": v} for k, v in NEW_CLASSES.items()]
    evaluator = CocoEvaluator({"images": images, "annotations": annotations, "categories": categories})
    detections = processor.post_process_object_detection(
        {"logits": logits, "pred_boxes": boxes}, 0.0, [(48, 64)] * 3
    )
    evaluator.update([1, 2, 3], detections)
    stats = evaluator.compute()
    assert 0.05 < stats["AP"] < 0.95 and metrics["map"] == pytest.approx(stats["AP"], abs=1e-6)
    assert metrics["map_50"] == pytest.approx(stats["AP50"], abs=1e-6)
    assert metrics["mar_100"] == pytest.approx(stats["AR100"], abs=1e-6)
    assert metrics["map_small"] == pytest.approx(stats["APs"], abs=1e-6)
