"""Detection data with `datasets`: COCO from the Hub or a local COCO, YOLO or VOC folder, the built-in set,
the paper's augmentation and collation into padded batches."""

from ..extras import require_extra

require_extra("hf_detr.data (datasets for training and evaluation)")

from .builtin import builtin_dataset_folder, write_shapes_coco
from .coco_folder import load_coco_folder
from .coco_panoptic import load_coco_panoptic_folder
from .collate import DetectionCollator, DetectionDataset, PanopticDataset, decode_record_image
from .detection_sources import load_detection_dataset
from .folder_layouts import load_detection_folder
from .panoptic_sources import load_panoptic_dataset
from .schema import (
    category_ids,
    class_names,
    detection_features,
    is_panoptic,
    is_thing,
    panoptic_categories,
    panoptic_features,
    stuff_label_ids,
)
from .transforms import RandomSizeCrop, detr_train_transforms, detr_val_size
from .voc_folder import load_voc_folder
from .yolo_folder import load_yolo_folder

__all__ = [
    "DetectionCollator",
    "DetectionDataset",
    "PanopticDataset",
    "RandomSizeCrop",
    "builtin_dataset_folder",
    "category_ids",
    "class_names",
    "decode_record_image",
    "detection_features",
    "detr_train_transforms",
    "detr_val_size",
    "is_panoptic",
    "is_thing",
    "load_coco_folder",
    "load_coco_panoptic_folder",
    "load_detection_dataset",
    "load_detection_folder",
    "load_panoptic_dataset",
    "load_voc_folder",
    "load_yolo_folder",
    "panoptic_categories",
    "panoptic_features",
    "stuff_label_ids",
    "write_shapes_coco",
]
