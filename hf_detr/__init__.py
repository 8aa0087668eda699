"""hf_detr: DETR (Carion et al., ECCV 2020) as a Hugging Face package."""

from .configuration_detr import COCO_DETECTION_LABELS, HfDetrConfig
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import (
    HfDetrForObjectDetection,
    HfDetrModel,
    HfDetrModelOutput,
    HfDetrObjectDetectionOutput,
    HfDetrPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "COCO_DETECTION_LABELS",
    "HfDetrConfig",
    "HfDetrForObjectDetection",
    "HfDetrImageProcessor",
    "HfDetrModel",
    "HfDetrModelOutput",
    "HfDetrObjectDetectionOutput",
    "HfDetrPreTrainedModel",
]
