"""hf_detr: DETR (Carion et al., ECCV 2020) as a Hugging Face package."""

import inspect

from .configuration_detr import COCO_DETECTION_LABELS, HfDetrConfig
from .foreign_checkpoints import register_checkpoint_conversion
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import (
    HfDetrForObjectDetection,
    HfDetrModel,
    HfDetrModelOutput,
    HfDetrObjectDetectionOutput,
    HfDetrPreTrainedModel,
)
from .modeling_detr_segmentation import HfDetrForSegmentation, HfDetrSegmentationOutput

__version__ = "0.1.0"


def _register_with_transformers() -> None:
    """Make the Auto classes (and `pipeline`) resolve model_type "hf_detr" to our classes, and make
    `save_pretrained` write code-carrying checkpoints (model files + `auto_map`)."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageSegmentation,
        AutoModelForObjectDetection,
        AutoModelForUniversalSegmentation,
        AutoVideoProcessor,
    )
    from transformers.models.auto import modeling_auto

    AutoConfig.register(HfDetrConfig.model_type, HfDetrConfig, exist_ok=True)
    AutoModel.register(HfDetrConfig, HfDetrModel, exist_ok=True)
    AutoModelForObjectDetection.register(HfDetrConfig, HfDetrForObjectDetection, exist_ok=True)
    # where transformers maps its DetrForSegmentation
    AutoModelForImageSegmentation.register(HfDetrConfig, HfDetrForSegmentation, exist_ok=True)
    AutoModelForUniversalSegmentation.register(HfDetrConfig, HfDetrForSegmentation, exist_ok=True)
    # keyed by transformers' default backend name, so loading logs no fallback warning
    AutoImageProcessor.register(
        HfDetrConfig, image_processor_classes={"torchvision": HfDetrImageProcessor}, exist_ok=True
    )
    # DETR has no video processor. Without this (empty) registration, `pipeline` guesses a remote
    # "HfDetrVideoProcessor" from the image processor's auto_map and prompts to trust remote code.
    # (Older transformers, 5.17 say, register one video class per config: nothing to register there.)
    if "video_processor_classes" in inspect.signature(AutoVideoProcessor.register).parameters:
        AutoVideoProcessor.register(HfDetrConfig, video_processor_classes={}, exist_ok=True)
    # `pipeline("object-detection")` checks model classes by name in this dict (registered classes are
    # not looked up there) and logs an error for ours otherwise; nothing else resolves entries by it.
    modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(
        HfDetrConfig.model_type, HfDetrForObjectDetection.__name__
    )
    # the same for `pipeline("image-segmentation")`, which merges these dicts
    for names in (
        modeling_auto.MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES,
        modeling_auto.MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES,
    ):
        names.setdefault(HfDetrConfig.model_type, HfDetrForSegmentation.__name__)
    HfDetrConfig.register_for_auto_class("AutoConfig")
    HfDetrModel.register_for_auto_class("AutoModel")
    HfDetrForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
    HfDetrForSegmentation.register_for_auto_class("AutoModelForImageSegmentation")
    HfDetrImageProcessor.register_for_auto_class("AutoImageProcessor")


_register_with_transformers()
register_checkpoint_conversion()  # from_pretrained converts transformers' and official checkpoints

__all__ = [
    "COCO_DETECTION_LABELS",
    "HfDetrConfig",
    "HfDetrForObjectDetection",
    "HfDetrForSegmentation",
    "HfDetrImageProcessor",
    "HfDetrModel",
    "HfDetrModelOutput",
    "HfDetrObjectDetectionOutput",
    "HfDetrPreTrainedModel",
    "HfDetrSegmentationOutput",
]
