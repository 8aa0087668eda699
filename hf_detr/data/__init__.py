"""Detection data with `datasets`: COCO from the Hub or a local folder, the built-in synthetic set,
the paper's augmentation and collation into padded batches."""

from ..extras import require_extra

require_extra("hf_detr.data (datasets for training and evaluation)")

from .builtin import builtin_dataset_folder, write_shapes_coco
from .coco_folder import load_coco_folder
from .collate import DetectionCollator, DetectionDataset, decode_as_stored
from .schema import category_ids, class_names, detection_features
from .sources import load_detection_dataset
from .transforms import RandomSizeCrop, detr_train_transforms, detr_val_size

__all__ = [
    "DetectionCollator",
    "DetectionDataset",
    "RandomSizeCrop",
    "builtin_dataset_folder",
    "category_ids",
    "class_names",
    "decode_as_stored",
    "detection_features",
    "detr_train_transforms",
    "detr_val_size",
    "load_coco_folder",
    "load_detection_dataset",
    "write_shapes_coco",
]
