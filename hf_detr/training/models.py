"""The detector a run trains: a new one (`config_overrides` on HfDetrConfig's defaults), or a checkpoint
fine-tuned (`init_from`) with the run's training settings and a class head for the dataset's classes.
The segmentation model of `--task panoptic` is built in panoptic.py; tasks.py picks between them."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..configuration_detr import HfDetrConfig
from ..modeling_detr import HfDetrForObjectDetection
from .arguments import TrainingArguments, fine_tuning_overrides, format_config_overrides
from .query_groups import set_query_groups

logger = logging.getLogger("hf_detr.training")


def build_model(args: TrainingArguments, names: list[str], coco_ids: list[int]) -> HfDetrForObjectDetection:
    """A model for the dataset's classes: from scratch (`config_overrides` on HfDetrConfig's defaults), or
    fine-tuned from `init_from`: its architecture and weights, with the run's training settings
    (`fine_tuning_overrides`, the query groups) and the class head re-initialised when the class names
    differ."""
    id2label = dict(enumerate(names))
    labels = {"id2label": id2label, "label2id": {name: index for index, name in id2label.items()}}
    if args.init_from:
        return fine_tuning_model(args, labels, coco_ids)
    config = HfDetrConfig(**args.model_config_kwargs(), **labels, coco_category_ids=list(coco_ids))
    try:
        return HfDetrForObjectDetection(config)
    except Exception as error:  # network errors come in many types (OSError, httpx, hub errors)
        if not config.use_pretrained_backbone:
            raise
        raise RuntimeError(
            f"Could not get the pretrained {config.backbone} backbone weights from the Hugging Face Hub ({error}). "
            "Make the Hub reachable (and HF_HUB_OFFLINE unset), or train from scratch without "
            "--config-overrides use_pretrained_backbone=true."
        ) from error


def fine_tuning_model(
    args: TrainingArguments, labels: dict[str, dict], coco_ids: list[int]
) -> HfDetrForObjectDetection:
    """`init_from`'s model with the run's training settings; for other classes, a class head whose rows
    of the classes both share (by name) keep the checkpoint's weights."""
    names = list(labels["id2label"].values())
    settings, for_new_models = fine_tuning_overrides(args)
    model = HfDetrForObjectDetection.from_pretrained(args.init_from, **settings)
    warn_checkpoint_keeps(args.init_from, model.config, for_new_models)
    old_names = list(model.config.id2label.values())
    if old_names != names:
        model.class_labels_classifier = class_head_for(model.class_labels_classifier, old_names, names)
        model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
        model.config.stuff_label_ids = None  # they named the checkpoint's classes
        kept = [name for name in names if name in old_names]
        logger.info(
            "Fine-tuning %s: a class head for %d classes (%s) in place of %s; %s.",
            args.init_from, len(names), ", ".join(names), ", ".join(old_names),
            f"the rows of {', '.join(kept)} and of no-object kept" if kept else "all new",
        )  # fmt: skip
    model.config.coco_category_ids = list(coco_ids)
    set_query_groups(model, args.num_query_groups)
    model.config.validate_detr_fields()
    return model


def warn_checkpoint_keeps(checkpoint: str, config: HfDetrConfig, for_new_models: dict[str, Any]) -> None:
    """One line when the run's overrides of the architecture (a preset's, a flag's) differ from the
    checkpoint's, which a fine-tuned model keeps."""
    differing = {key: value for key, value in for_new_models.items() if getattr(config, key, None) != value}
    if differing:
        theirs = {key: getattr(config, key, None) for key in differing}
        logger.warning(
            "Fine-tuning keeps %s's %s; the run's %s apply to new models only.",
            checkpoint, format_config_overrides(theirs), format_config_overrides(differing),
        )  # fmt: skip


def class_head_for(old: torch.nn.Linear, old_names: list[str], names: list[str]) -> torch.nn.Linear:
    """A class head over `names` + no-object, initialised as the official code does (PyTorch's
    default); when some names are the checkpoint's, their rows and the no-object row are copied."""
    head = torch.nn.Linear(old.in_features, len(names) + 1).to(old.weight.device, old.weight.dtype)
    shared = [(new, old_names.index(name)) for new, name in enumerate(names) if name in old_names]
    if shared:
        rows = [*shared, (len(names), len(old_names))]  # the no-object row is the last of each
        new_rows, old_rows = (torch.tensor(index) for index in zip(*rows))
        with torch.no_grad():
            head.weight[new_rows] = old.weight[old_rows]
            head.bias[new_rows] = old.bias[old_rows]
    return head


__all__ = ["build_model", "class_head_for", "fine_tuning_model"]
