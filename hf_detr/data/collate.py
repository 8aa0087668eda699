"""From a split of the common schema to padded training batches.

`DetectionDataset` decodes each image with `decode_image`, the one decoding of training, evaluation,
prediction and the processor's file paths (as displayed: the EXIF orientation applied, as `datasets`,
transformers' pipelines and PIL-based tools show it, and the loaders size it; 16-bit scaled to 8 bits;
RGB), applies the augmentation seeded by (seed, epoch, index), and yields the image with its
annotation: in COCO format, or augmented, the tensors the augmentation moved (`AugmentedAnnotation`,
hf_detr/data/augmented.py: the labels are built from them; read as a mapping it is the COCO format).
Images that cannot be decoded, and stored paths that lead outside the dataset folders a folder loader
recorded (`image_folders`: a symlink changed since), are skipped with a counted warning.
`DetectionCollator` turns a list of samples into `pixel_values`, `pixel_mask` and `labels` with
`HfDetrImageProcessor`: the very code that prepares images at inference (and converts COCO annotations;
augmented ones become labels directly).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from torchvision import tv_tensors
from torchvision.ops import box_convert

from ..image_processing_detr import HfDetrImageProcessor, decode_image
from .augmented import AugmentedAnnotation, AugmentedDetection, AugmentedPanoptic, coco_form
from .folder_reading import inside_folders
from .panoptic_ids import id_map
from .schema import PANOPTIC_MASK, image_folders

logger = logging.getLogger("hf_detr.data")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that depends only on (seed, epoch, index): a resumed run redraws the same."""
    mixed = (seed * 1_000_003 + epoch) * 1_000_003 + index
    return mixed % (2**63 - 1)


class DetectionDataset(torch.utils.data.Dataset):
    """A split of the common schema as a map-style torch dataset of {"image", "annotation"} samples.

    `annotation` is COCO detection format ({"image_id", "annotations": [{"bbox", "category_id",
    "area", "iscrowd"}]}) with `category_id` = the split's contiguous class id (the model's label id);
    with `transforms`, an `AugmentedDetection`: the augmented boxes (corners), class ids, crowd flags and
    ids, which read as a mapping give that COCO format (built only when read). An image that cannot be
    decoded is skipped with a counted warning (`skipped`): with `on_error="skip"` (evaluation) the
    sample is None and the collator drops it; with `on_error="replace"` (training) the next decodable
    sample takes its place, so batches keep their size and every process of a distributed run keeps
    stepping together.
    """

    def __init__(
        self, split: Dataset, transforms: Callable | None = None, seed: int = 0, on_error: str = "skip"
    ) -> None:
        if on_error not in ("skip", "replace"):
            raise ValueError(f"`on_error` must be 'skip' or 'replace', got {on_error!r}.")
        self.split = split.cast_column("image", ImageFeature(decode=False))
        self.folders = image_folders(split)  # a folder loader's: stored paths are read only inside them
        self.transforms = transforms
        self.seed = seed
        self.on_error = on_error
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        attempts = len(self) if self.on_error == "replace" else 1
        for offset in range(attempts):
            sample = self._load(index, (index + offset) % len(self))
            if sample is not None:
                return sample
        if self.on_error == "replace":
            raise RuntimeError("No image of the split can be decoded.")
        return None

    def _load(self, index: int, source_index: int) -> dict[str, Any] | None:
        """Sample `source_index`, augmented as sample `index` (its seed), or None if undecodable."""
        record = self.split[source_index]
        decoded = self.decoded(record, f"sample {source_index}")
        return None if decoded is None else self._sample(decoded, record, index)

    def decoded(self, record: dict[str, Any], what: str | None) -> Any | None:
        """`_decode(record)`, or None when it cannot be decoded or its size is not the record's
        (`size_problem`): counted in `skipped` and logged as `what` (None: neither, a silent probe)."""
        try:
            decoded = self._decode(record)
            problem = size_problem(decoded[0] if isinstance(decoded, tuple) else decoded, record)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
            problem = f"cannot decode {self.what_is_decoded} ({error})"
        if problem is None or what is None:
            return decoded if problem is None else None
        self.skipped += 1
        source = record["image"].get("path") or f"image_id {record['image_id']}"
        logger.warning(
            "Skipped %s (%s): %s. %d sample(s) skipped so far in this process.",
            what,
            source,
            problem,
            self.skipped,
        )
        return None

    what_is_decoded = "the image"  # what `_decode` reads, for the skip warning

    def _decode(self, record: dict[str, Any]) -> Any:
        return decode_record_image(record["image"], self.folders)

    def _sample(self, image: PIL.Image.Image, record: dict[str, Any], index: int) -> dict[str, Any]:
        objects = record["objects"]
        if self.transforms is None:
            annotations = [
                {"bbox": list(bbox), "category_id": int(category), "area": float(area), "iscrowd": int(crowd), "id": int(i)}
                for i, bbox, category, area, crowd in zip(
                    objects["id"], objects["bbox"], objects["category"], objects["area"], objects["iscrowd"]
                )
            ]  # fmt: skip
            return {
                "image": image,
                "annotation": {"image_id": record["image_id"], "annotations": annotations},
            }
        out = self._augment(image, record, index)
        # the boxes as corners, as the augmentation left them: the collator's labels come from them
        annotation = AugmentedDetection(
            record["image_id"], augmented_size(out), out["boxes"], out["labels"], out["iscrowd"], out["ids"]
        )
        return {"image": out["image"], "annotation": annotation}

    def _augment(
        self, image: PIL.Image.Image, record: dict[str, Any], index: int, **extra: Any
    ) -> dict[str, Any]:
        """The transforms applied to the image, its boxes and per-box fields (and `extra` entries such as
        masks), seeded by (seed, epoch, index)."""
        objects = record["objects"]
        sample = {
            "image": image,
            # corners, not (x, y, w, h): clamped to the canvas exactly, so border boxes stay valid. The
            # first of the training path's two box conversions; the labels' normalized (cx, cy, w, h)
            # is the second (hf_detr/data/augmented.py), as in the official DETR
            "boxes": tv_tensors.BoundingBoxes(
                box_convert(
                    torch.tensor(objects["bbox"], dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy"
                ),
                format="XYXY",
                canvas_size=(image.height, image.width),
            ),
            "labels": torch.tensor(objects["category"], dtype=torch.long),
            "iscrowd": torch.tensor(objects["iscrowd"], dtype=torch.long),
            "ids": torch.tensor(objects["id"], dtype=torch.long),
            **extra,
        }
        # transforms.v2 draws from the global CPU generator: seed it for this sample and restore it
        # after. Only the CPU generator: `torch.manual_seed` would also reseed (or, before CUDA starts,
        # queue with a formatted stack trace: ~1 ms a sample) the GPU generators, which fork_rng does
        # not restore here.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transforms(sample)


class PanopticDataset(DetectionDataset):
    """A panoptic split (hf_detr.data.schema) as samples whose `annotation` is COCO panoptic with the
    decoded PNG: {"image_id", "segments_info": [{"id", "category_id", "iscrowd"}], "panoptic_image":
    ids [H, W]} (category ids are the split's class ids), for `HfDetrImageProcessor(format="coco_panoptic")`;
    with `transforms`, an `AugmentedPanoptic` (the augmented masks, one per segment, read as a mapping:
    that COCO panoptic format).

    The augmentation moves one mask per segment with the image (nearest resize, as torchvision does
    masks); a segment whose pixels leave the picture is dropped with its box. Segments absent from the
    PNG, and PNGs of another size than their image, are counted and skipped like undecodable images.
    """

    def __init__(
        self, split: Dataset, transforms: Callable | None = None, seed: int = 0, on_error: str = "skip"
    ) -> None:
        super().__init__(split, transforms, seed, on_error)
        self.split = self.split.cast_column(PANOPTIC_MASK, ImageFeature(decode=False))
        self.dropped_segments = 0

    what_is_decoded = "the image or its panoptic PNG"

    def _decode(self, record: dict[str, Any]) -> tuple[PIL.Image.Image, np.ndarray]:
        image = decode_record_image(record["image"], self.folders)
        png = record[PANOPTIC_MASK]
        source = io.BytesIO(png["bytes"]) if png.get("bytes") else contained_path(png["path"], self.folders)
        with PIL.Image.open(source) as opened:
            ids = id_map(opened, "panoptic PNG")  # [H, W]
        if ids.shape != (image.height, image.width):
            raise ValueError(
                f"its panoptic PNG is {ids.shape[0]}x{ids.shape[1]} (HxW) but the image is {image.height}x{image.width}"
            )
        return image, ids

    def _sample(self, decoded: tuple[PIL.Image.Image, np.ndarray], record: dict[str, Any], index: int):
        image, ids = decoded
        record = {**record, "objects": self._present_segments(record["objects"], ids, record["image_id"])}
        objects = record["objects"]
        if self.transforms is not None:
            masks = (
                torch.from_numpy(ids)[None] == torch.tensor(objects["id"], dtype=torch.long)[:, None, None]
            )
            out = self._augment(image, record, index, masks=tv_tensors.Mask(masks))  # masks [n, H, W]
            kept = out["masks"].flatten(1).any(1)  # a crop may keep a box but none of a segment's pixels
            annotation = AugmentedPanoptic(
                record["image_id"],
                out["masks"][kept],
                out["labels"][kept],
                out["iscrowd"][kept],
                out["ids"][kept],
            )
            return {"image": out["image"], "annotation": annotation}
        segments = [
            {"id": int(i), "category_id": int(c), "iscrowd": int(crowd)}
            for i, c, crowd in zip(objects["id"], objects["category"], objects["iscrowd"])
        ]
        annotation = {"image_id": record["image_id"], "segments_info": segments, "panoptic_image": ids}
        return {"image": image, "annotation": annotation}

    def _present_segments(self, objects: dict[str, list], ids: np.ndarray, image_id: int) -> dict[str, list]:
        """The objects whose segment id occurs in the PNG (the others are counted and dropped)."""
        present = np.isin(np.asarray(objects["id"], dtype=np.int64), ids)
        if present.all():
            return objects
        self.dropped_segments += int((~present).sum())
        logger.warning(
            "Image %s: dropped %d segment(s) whose id is not in its panoptic PNG (%d so far in this process).",
            image_id, int((~present).sum()), self.dropped_segments,
        )  # fmt: skip
        return {key: [v for v, keep in zip(values, present) if keep] for key, values in objects.items()}


def augmented_size(out: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of an augmented image, as the processor reads it: a PIL image's size, else the
    boxes' canvas (transforms.v2 keeps it the image's), else a [..., H, W] tensor's last two sides."""
    image, boxes = out["image"], out["boxes"]
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        return tuple(boxes.canvas_size)
    return tuple(image.shape[-2:])


def size_problem(image: PIL.Image.Image, record: dict[str, Any]) -> str | None:
    """Why the decoded image cannot carry its record's boxes: its size as displayed is not the
    record's `width` x `height` (the size its annotation file gives, which the loaders take without
    opening the file), or None. The image is skipped, not rescaled."""
    width, height = record.get("width"), record.get("height")
    if width is None or height is None or image.size == (width, height):
        return None
    hint = (
        "the annotation gives an EXIF-rotated image's stored size; images are read as displayed"
        if image.size == (height, width)
        else "skipped, not rescaled"
    )
    return f"the image is {image.width}x{image.height} but its annotation says {width}x{height} ({hint})"


def decode_record_image(image: dict[str, Any], folders: list[str] | None = None) -> PIL.Image.Image:
    """Decode a `datasets` image ({"bytes", "path"}) with `decode_image`: its stored bytes, even empty
    ones (a broken file: never the bare path, which would be resolved in the current directory and
    could load another file of that name), else its path, read only inside `folders` when given."""
    if image.get("bytes") is not None:
        return decode_image(image["bytes"])
    return decode_image(contained_path(image["path"], folders))


def contained_path(path: str, folders: list[str] | None) -> str:
    """`path`, checked (symlinks resolved) to lie inside `folders` (None: any path) before it is read:
    a `ValueError` when it leads outside the dataset folder."""
    if folders is not None and not inside_folders(path, folders):
        raise ValueError(f"{path} leads outside the dataset folder (a symlink), so it is not read")
    return path


class DetectionCollator:
    """Samples -> {"pixel_values", "pixel_mask", "labels"} through `HfDetrImageProcessor`.

    Training samples were resized by the augmentation: `do_resize=False` keeps them as they are;
    validation samples are resized by the processor (`size`). Samples that are None (undecodable
    images) are dropped. Extra keyword arguments go to the processor (e.g. `num_threads=1` inside
    DataLoader workers, `format="coco_panoptic"` for `PanopticDataset` samples). With
    `keep_annotations` the batch also carries the samples' annotations as they came (`annotations`;
    augmented ones in their COCO form), for evaluation against the original resolution.

    A sample's `annotation` is a COCO annotation (users' samples, evaluation) or the `AugmentedAnnotation`
    of a training sample (hf_detr/data/augmented.py). When every sample of a batch has augmented ones and
    the processor does not resize, the processor prepares the pixels only and the labels are built from
    the augmented tensors: the same labels as the processor's conversion of their COCO form, with two
    box conversions on the whole training path instead of five. Otherwise every annotation goes through
    the processor (augmented ones in their COCO form).
    """

    def __init__(
        self,
        processor: HfDetrImageProcessor | None = None,
        do_resize: bool = True,
        keep_annotations: bool = False,
        **processor_kwargs: Any,
    ) -> None:
        self.processor = processor or HfDetrImageProcessor()
        self.do_resize = do_resize
        self.keep_annotations = keep_annotations
        self.processor_kwargs = processor_kwargs

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        annotations = [s["annotation"] for s in samples]
        from_tensors = self._labels_from_tensors(annotations)
        batch = self.processor(
            [s["image"] for s in samples],
            annotations=None if from_tensors else [coco_form(a) for a in annotations],
            do_resize=self.do_resize,
            **self.processor_kwargs,
        )
        if from_tensors:
            batch["labels"] = self._augmented_labels(annotations, batch)
        if self.keep_annotations:
            return {**batch, "annotations": [coco_form(a) for a in annotations]}
        return dict(batch)

    def _setting(self, name: str) -> Any:
        """The processor setting this collator calls it with (an override of None: the processor's own)."""
        value = self.do_resize if name == "do_resize" else self.processor_kwargs.get(name)
        return getattr(self.processor, name) if value is None else value

    def _labels_from_tensors(self, annotations: list[Any]) -> bool:
        """Whether the labels are built from augmented tensors: every annotation augmented, and the
        processor would neither resize nor leave the boxes unnormalized nor return numpy arrays."""
        return (
            all(isinstance(a, AugmentedAnnotation) for a in annotations)
            and self._setting("do_resize") is False
            and self._setting("do_convert_annotations") is True
            and self.processor_kwargs.get("return_tensors") != "np"
        )

    def _augmented_labels(self, annotations: list[AugmentedAnnotation], batch: Any) -> list[dict[str, Any]]:
        """The labels the processor would give `annotations` in this batch (masks padded as its pixels)."""
        padded_size = tuple(batch["pixel_values"].shape[-2:]) if "pixel_mask" in batch else None
        annotation_format = getattr(self._setting("format"), "value", self._setting("format"))
        return_masks = self.processor_kwargs.get("return_segmentation_masks")
        return [
            annotation.labels(index, padded_size, annotation_format, return_masks)
            for index, annotation in enumerate(annotations)
        ]


__all__ = ["DetectionCollator", "DetectionDataset", "PanopticDataset", "decode_record_image", "sample_seed"]
