"""Training DETR with Accelerate: the paper's recipe, checkpoints, resume, evaluation, publishing."""

from ..extras import require_extra

require_extra("hf_detr.training (hf-detr-train)")

from .arguments import PRESETS, TrainingArguments, parse_args, resolve_arguments
from .checkpoints import TrainingState, latest_checkpoint
from .models import build_model
from .trainer import TrainingResult, TrainingStopped, train

__all__ = [
    "PRESETS",
    "TrainingArguments",
    "TrainingResult",
    "TrainingState",
    "TrainingStopped",
    "build_model",
    "latest_checkpoint",
    "parse_args",
    "resolve_arguments",
    "train",
]
