"""Each task as a training run uses it: the evaluation layer's task (hf_detr/evaluation/tasks.py: the
data, the collators, the evaluator) and the model the run trains. `setup_run` takes its task from
`task_for(args.task)`, `hf-detr-evaluate` from the evaluation layer's `task_for`: the same classes."""

from __future__ import annotations

from typing import Any

from ..data import category_ids, class_names, stuff_label_ids
from ..evaluation.tasks import DetectionTask, PanopticTask, Task
from .arguments import TrainingArguments
from .models import build_model
from .panoptic import build_segmentation_model


class DetectionTraining(DetectionTask):
    def build_model(self, args: TrainingArguments, train_split: Any) -> Any:
        """A detector for the training split's classes (new, or fine-tuned from `init_from`)."""
        return build_model(args, class_names(train_split), category_ids(train_split))


class PanopticTraining(PanopticTask):
    def build_model(self, args: TrainingArguments, train_split: Any) -> Any:
        """A segmentation model for the split's classes, its stuff classes fused into one segment each."""
        model = build_segmentation_model(args, class_names(train_split), category_ids(train_split))
        model.config.stuff_label_ids = stuff_label_ids(train_split)
        return model


TRAINING_TASKS: dict[str, Task] = {task.name: task for task in (DetectionTraining(), PanopticTraining())}


def task_for(name: str) -> DetectionTraining | PanopticTraining:
    """The task called `name`, with the model a run of it trains."""
    try:
        return TRAINING_TASKS[name]  # type: ignore[return-value]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(TRAINING_TASKS)}.") from None


__all__ = ["TRAINING_TASKS", "DetectionTraining", "PanopticTraining", "task_for"]
