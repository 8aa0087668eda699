"""What `--task panoptic` changes in a run (paper section 4.4): the model is an `HfDetrForSegmentation`
built on a trained detector, the data are COCO panoptic segments with their masks, and evaluation is
panoptic quality.

The paper's recipe is two stages: a detector trained on the boxes of things and stuff, then the mask
head trained with the detector frozen (`--init-from DETECTOR --freeze-detector`). A detector trained
on other classes (the built-in main job knows the shapes, not the background textures) can start the
second stage too: its class head is widened to the new label set (rows of classes it knows are kept,
matched by name, and the no-object row), and with `--freeze-detector` that head trains beside the
mask head while the rest of the detector stays frozen.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from ..configuration_detr import HfDetrConfig
from ..modeling_detr import HfDetrForObjectDetection
from ..modeling_detr_segmentation import HfDetrForSegmentation
from .arguments import TrainingArguments, fine_tuning_overrides
from .checkpoints import latest_checkpoint

logger = logging.getLogger("hf_detr.training")
SEGMENTATION_ARCHITECTURE = HfDetrForSegmentation.__name__
DETECTOR_STAGE_DIR = "detector-stage"


def build_segmentation_model(
    args: TrainingArguments, names: list[str], coco_ids: list[int]
) -> HfDetrForSegmentation:
    """A segmentation model for the dataset's classes: from scratch, from a segmentation checkpoint, or a
    new mask head on a detector checkpoint (`init_from`), frozen as `freeze_detector` says."""
    labels = labels_config(names)
    if not args.init_from:
        config = HfDetrConfig(**args.model_config_kwargs(), **labels, coco_category_ids=list(coco_ids))
        config.use_masks = True
        model = HfDetrForSegmentation(config)
        new_classes = True
    else:
        config = HfDetrConfig.from_pretrained(args.init_from)
        if SEGMENTATION_ARCHITECTURE in (config.architectures or []):
            model = HfDetrForSegmentation.from_pretrained(args.init_from)
        else:
            model = HfDetrForSegmentation.from_detection_model(
                HfDetrForObjectDetection.from_pretrained(args.init_from)
            )
        new_classes = widen_class_head(model.detr, names)
        set_labels(model, names)
    config = model.config
    config.coco_category_ids = list(coco_ids)
    run_settings, _ = fine_tuning_overrides(args)  # the losses' settings: the run's, on a checkpoint too
    config.auxiliary_loss = run_settings["auxiliary_loss"]
    config.mask_loss_coefficient = run_settings["mask_loss_coefficient"]
    config.dice_loss_coefficient = run_settings["dice_loss_coefficient"]
    if args.freeze_detector:
        model.freeze_detector()
        if new_classes:  # classes the detector never saw: their rows must learn
            model.detr.class_labels_classifier.requires_grad_(True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "Detector frozen: %d trainable parameters (mask head%s).",
            trainable, " and the widened class head" if new_classes else "",
        )  # fmt: skip
    return model


def training_stages(args: TrainingArguments) -> list[TrainingArguments]:
    """The runs `args` asks for: itself, or with `detector_steps` the paper's two stages: the detector
    (and its class head) trained on the panoptic boxes of things and stuff with the mask losses off, in
    `output_dir/detector-stage`, then the mask head on that detector, frozen, in `output_dir`."""
    if args.task != "panoptic" or not args.detector_steps:
        return [args]
    detector_dir = str(Path(args.output_dir) / DETECTOR_STAGE_DIR)
    detector_stage = dataclasses.replace(
        args, detector_steps=None, max_steps=args.detector_steps, freeze_detector=False,
        config_overrides={**args.config_overrides, "mask_loss_coefficient": 0.0, "dice_loss_coefficient": 0.0},
        mask_head_learning_rate=None, output_dir=detector_dir, eval_steps=None, eval_epochs=None, push_to_hub=None,
    )  # fmt: skip
    mask_stage = dataclasses.replace(args, detector_steps=None, init_from=detector_dir, freeze_detector=True)
    return [detector_stage, mask_stage]


def stage_to_run(stage: TrainingArguments, is_last: bool) -> TrainingArguments | None:
    """`stage` as it should run now: None when an earlier stage's model is already saved (a resumed
    two-stage run), and without `resume_from_checkpoint latest` when the stage has no checkpoint yet."""
    output = Path(stage.output_dir)
    if not is_last and (output / "model.safetensors").is_file() and (output / "config.json").is_file():
        logger.info("The detector stage is already trained (%s): going on with the mask stage.", output)
        return None
    if stage.resume_from_checkpoint == "latest" and latest_checkpoint(output / "checkpoints") is None:
        return dataclasses.replace(stage, resume_from_checkpoint=None)
    return stage


def labels_config(names: list[str]) -> dict[str, dict]:
    id2label = dict(enumerate(names))
    return {"id2label": id2label, "label2id": {name: index for index, name in id2label.items()}}


def set_labels(model: nn.Module, names: list[str]) -> None:
    """`id2label` / `label2id` of `names` on the config of every submodel (the segmentation model, its
    detector and its base model may hold their own copies)."""
    labels = labels_config(names)
    configs = {
        id(m.config): m.config
        for m in model.modules()
        if isinstance(getattr(m, "config", None), HfDetrConfig)
    }
    for config in configs.values():
        config.id2label, config.label2id = labels["id2label"], labels["label2id"]


@torch.no_grad()
def widen_class_head(detector: HfDetrForObjectDetection, names: list[str]) -> bool:
    """Give `detector` a class head over `names` (+ no-object). A class the detector already has (same
    name) keeps its row, as does the no-object row; new classes start as a new `nn.Linear` initialises
    them. Returns whether the label set changed."""
    config = detector.config
    old_names = [config.id2label[i] for i in range(config.num_labels)]
    if old_names == list(names):
        return False
    old = detector.class_labels_classifier
    new = nn.Linear(old.in_features, len(names) + 1).to(old.weight.device, old.weight.dtype)
    kept = [(index, old_names.index(name)) for index, name in enumerate(names) if name in old_names]
    kept.append((len(names), len(old_names)))  # no-object
    for new_row, old_row in kept:
        new.weight[new_row] = old.weight[old_row]
        new.bias[new_row] = old.bias[old_row]
    detector.class_labels_classifier = new
    set_labels(detector, names)
    logger.info(
        "Class head widened from %d to %d classes (%d kept by name: %s).",
        len(old_names), len(names), len(kept) - 1, ", ".join(names[i] for i, _ in kept[:-1]) or "none",
    )  # fmt: skip
    return True


__all__ = [
    "build_segmentation_model",
    "set_labels",
    "widen_class_head",
]
