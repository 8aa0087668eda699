"""The COCO panoptic categories (133: 80 things + 53 stuff), as listed in cocodataset/panopticapi's
`panoptic_coco_categories.json` (commit 7bb4655): id, name, supercategory and whether it is a thing.

The official DETR panoptic models (facebookresearch/detr, `models/detr.py`) predict 250 class slots,
indexed by COCO panoptic category id ("large enough to hold max_obj_id + 1"): ids 1..200 are used with
gaps, the other slots are never trained. Converted checkpoints name the unused slots "N/A", as the
91-class COCO detection labels do. Things are the countable objects (ids 1..90, the COCO detection
names); stuff are amorphous regions ("sky-other-merged", "wall-other-merged", ...), whose queries
`post_process_panoptic_segmentation(..., label_ids_to_fuse=...)` merges into one segment per class.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# class slots of the official panoptic models (models/detr.py: num_classes = 250 for coco_panoptic)
COCO_PANOPTIC_NUM_LABELS = 250


class PanopticCategory(NamedTuple):
    """One COCO panoptic category."""

    id: int
    name: str
    supercategory: str
    isthing: bool


COCO_PANOPTIC_CATEGORIES: tuple[PanopticCategory, ...] = tuple(
    PanopticCategory(*row)
    for row in (
        (1, "person", "person", True),
        (2, "bicycle", "vehicle", True),
        (3, "car", "vehicle", True),
        (4, "motorcycle", "vehicle", True),
        (5, "airplane", "vehicle", True),
        (6, "bus", "vehicle", True),
        (7, "train", "vehicle", True),
        (8, "truck", "vehicle", True),
        (9, "boat", "vehicle", True),
        (10, "traffic light", "outdoor", True),
        (11, "fire hydrant", "outdoor", True),
        (13, "stop sign", "outdoor", True),
        (14, "parking meter", "outdoor", True),
        (15, "bench", "outdoor", True),
        (16, "bird", "animal", True),
        (17, "cat", "animal", True),
        (18, "dog", "animal", True),
        (19, "horse", "animal", True),
        (20, "sheep", "animal", True),
        (21, "cow", "animal", True),
        (22, "elephant", "animal", True),
        (23, "bear", "animal", True),
        (24, "zebra", "animal", True),
        (25, "giraffe", "animal", True),
        (27, "backpack", "accessory", True),
        (28, "umbrella", "accessory", True),
        (31, "handbag", "accessory", True),
        (32, "tie", "accessory", True),
        (33, "suitcase", "accessory", True),
        (34, "frisbee", "sports", True),
        (35, "skis", "sports", True),
        (36, "snowboard", "sports", True),
        (37, "sports ball", "sports", True),
        (38, "kite", "sports", True),
        (39, "baseball bat", "sports", True),
        (40, "baseball glove", "sports", True),
        (41, "skateboard", "sports", True),
        (42, "surfboard", "sports", True),
        (43, "tennis racket", "sports", True),
        (44, "bottle", "kitchen", True),
        (46, "wine glass", "kitchen", True),
        (47, "cup", "kitchen", True),
        (48, "fork", "kitchen", True),
        (49, "knife", "kitchen", True),
        (50, "spoon", "kitchen", True),
        (51, "bowl", "kitchen", True),
        (52, "banana", "food", True),
        (53, "apple", "food", True),
        (54, "sandwich", "food", True),
        (55, "orange", "food", True),
        (56, "broccoli", "food", True),
        (57, "carrot", "food", True),
        (58, "hot dog", "food", True),
        (59, "pizza", "food", True),
        (60, "donut", "food", True),
        (61, "cake", "food", True),
        (62, "chair", "furniture", True),
        (63, "couch", "furniture", True),
        (64, "potted plant", "furniture", True),
        (65, "bed", "furniture", True),
        (67, "dining table", "furniture", True),
        (70, "toilet", "furniture", True),
        (72, "tv", "electronic", True),
        (73, "laptop", "electronic", True),
        (74, "mouse", "electronic", True),
        (75, "remote", "electronic", True),
        (76, "keyboard", "electronic", True),
        (77, "cell phone", "electronic", True),
        (78, "microwave", "appliance", True),
        (79, "oven", "appliance", True),
        (80, "toaster", "appliance", True),
        (81, "sink", "appliance", True),
        (82, "refrigerator", "appliance", True),
        (84, "book", "indoor", True),
        (85, "clock", "indoor", True),
        (86, "vase", "indoor", True),
        (87, "scissors", "indoor", True),
        (88, "teddy bear", "indoor", True),
        (89, "hair drier", "indoor", True),
        (90, "toothbrush", "indoor", True),
        (92, "banner", "textile", False),
        (93, "blanket", "textile", False),
        (95, "bridge", "building", False),
        (100, "cardboard", "raw-material", False),
        (107, "counter", "furniture-stuff", False),
        (109, "curtain", "textile", False),
        (112, "door-stuff", "furniture-stuff", False),
        (118, "floor-wood", "floor", False),
        (119, "flower", "plant", False),
        (122, "fruit", "food-stuff", False),
        (125, "gravel", "ground", False),
        (128, "house", "building", False),
        (130, "light", "furniture-stuff", False),
        (133, "mirror-stuff", "furniture-stuff", False),
        (138, "net", "structural", False),
        (141, "pillow", "textile", False),
        (144, "platform", "ground", False),
        (145, "playingfield", "ground", False),
        (147, "railroad", "ground", False),
        (148, "river", "water", False),
        (149, "road", "ground", False),
        (151, "roof", "building", False),
        (154, "sand", "ground", False),
        (155, "sea", "water", False),
        (156, "shelf", "furniture-stuff", False),
        (159, "snow", "ground", False),
        (161, "stairs", "furniture-stuff", False),
        (166, "tent", "building", False),
        (168, "towel", "textile", False),
        (171, "wall-brick", "wall", False),
        (175, "wall-stone", "wall", False),
        (176, "wall-tile", "wall", False),
        (177, "wall-wood", "wall", False),
        (178, "water-other", "water", False),
        (180, "window-blind", "window", False),
        (181, "window-other", "window", False),
        (184, "tree-merged", "plant", False),
        (185, "fence-merged", "structural", False),
        (186, "ceiling-merged", "ceiling", False),
        (187, "sky-other-merged", "sky", False),
        (188, "cabinet-merged", "furniture-stuff", False),
        (189, "table-merged", "furniture-stuff", False),
        (190, "floor-other-merged", "floor", False),
        (191, "pavement-merged", "ground", False),
        (192, "mountain-merged", "solid", False),
        (193, "grass-merged", "plant", False),
        (194, "dirt-merged", "ground", False),
        (195, "paper-merged", "raw-material", False),
        (196, "food-other-merged", "food-stuff", False),
        (197, "building-other-merged", "building", False),
        (198, "rock-merged", "solid", False),
        (199, "wall-other-merged", "wall", False),
        (200, "rug-merged", "textile", False),
    )
)
COCO_PANOPTIC_THING_IDS: tuple[int, ...] = tuple(c.id for c in COCO_PANOPTIC_CATEGORIES if c.isthing)
COCO_PANOPTIC_STUFF_IDS: tuple[int, ...] = tuple(c.id for c in COCO_PANOPTIC_CATEGORIES if not c.isthing)


def coco_panoptic_categories() -> list[dict[str, Any]]:
    """The categories as panopticapi's json lists them (`isthing` 0 or 1), e.g. the `categories` of
    `hf_detr.evaluation.PanopticEvaluator` for a converted official panoptic model."""
    return [{**c._asdict(), "isthing": int(c.isthing)} for c in COCO_PANOPTIC_CATEGORIES]


def coco_panoptic_id2label(num_labels: int = COCO_PANOPTIC_NUM_LABELS) -> dict[int, str]:
    """Label id (= COCO panoptic category id) -> name for `num_labels` class slots; "N/A" where COCO
    panoptic has no category."""
    largest = COCO_PANOPTIC_CATEGORIES[-1].id
    if num_labels <= largest:
        raise ValueError(
            f"`num_labels` must exceed the largest COCO panoptic category id ({largest}), got {num_labels}."
        )
    names = {c.id: c.name for c in COCO_PANOPTIC_CATEGORIES}
    return {i: names.get(i, "N/A") for i in range(num_labels)}


def coco_panoptic_label_fields(num_labels: int = COCO_PANOPTIC_NUM_LABELS) -> dict[str, Any]:
    """`HfDetrConfig` fields of a model whose labels are the COCO panoptic category ids: `id2label`,
    `label2id` and `stuff_label_ids` (the 53 stuff ids, to pass as `label_ids_to_fuse`)."""
    id2label = coco_panoptic_id2label(num_labels)
    return {
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "stuff_label_ids": list(COCO_PANOPTIC_STUFF_IDS),
    }


__all__ = [
    "COCO_PANOPTIC_CATEGORIES",
    "COCO_PANOPTIC_NUM_LABELS",
    "COCO_PANOPTIC_STUFF_IDS",
    "COCO_PANOPTIC_THING_IDS",
    "PanopticCategory",
    "coco_panoptic_categories",
    "coco_panoptic_id2label",
    "coco_panoptic_label_fields",
]
