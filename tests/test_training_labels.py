"""Training labels built straight from the augmented tensors (hf_detr/data/augmented.py) are the labels
the processor made of the same samples as COCO dicts (the route before: five box conversions), for
detection and panoptic, with crowds, boxes across the border, empty boxes and empty samples; users'
COCO samples, resizing collators and `keep_annotations` still go through the processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hf_detr import HfDetrImageProcessor
from hf_detr.data import (
    DetectionCollator,
    DetectionDataset,
    PanopticDataset,
    detr_train_transforms,
    load_detection_dataset,
    load_panoptic_dataset,
)
from hf_detr.data.augmented import AugmentedAnnotation, AugmentedDetection, AugmentedPanoptic


# ---------------------------------------------------------------------------------------------------
# The route before: augmented tensors -> COCO dicts -> the processor's annotation conversion
# ---------------------------------------------------------------------------------------------------
class ProcessorRouteDetection(DetectionDataset):
    """`DetectionDataset` as it was: the augmented boxes back to COCO (x, y, w, h) dicts."""

    def _sample(self, image, record, index):
        out = self._augment(image, record, index)
        boxes = box_convert(out["boxes"].as_subclass(torch.Tensor), "xyxy", "xywh")
        annotations = [
            {"bbox": box.tolist(), "category_id": int(label), "area": float(box[2] * box[3]),
             "iscrowd": int(crowd), "id": int(i)}
            for box, label, crowd, i in zip(boxes, out["labels"], out["iscrowd"], out["ids"])
        ]  # fmt: skip
        return {
            "image": out["image"],
            "annotation": {"image_id": record["image_id"], "annotations": annotations},
        }


class ProcessorRoutePanoptic(PanopticDataset):
    """`PanopticDataset` as it was: the augmented masks back to a panoptic id map and `segments_info`."""

    def _sample(self, decoded, record, index):
        image, ids = decoded
        objects = self._present_segments(record["objects"], ids, record["image_id"])
        masks = torch.from_numpy(ids)[None] == torch.tensor(objects["id"], dtype=torch.long)[:, None, None]
        out = self._augment(image, {**record, "objects": objects}, index, masks=tv_tensors.Mask(masks))
        kept = out["masks"].flatten(1).any(1)
        segment_ids = out["ids"][kept]
        ids = (out["masks"][kept].long() * segment_ids[:, None, None]).sum(0).numpy()
        segments = [
            {"id": int(i), "category_id": int(c), "iscrowd": int(crowd)}
            for i, c, crowd in zip(segment_ids, out["labels"][kept], out["iscrowd"][kept])
        ]
        annotation = {"image_id": record["image_id"], "segments_info": segments, "panoptic_image": ids}
        return {"image": out["image"], "annotation": annotation}


def assert_same_labels(direct: list[dict], expected: list[dict]) -> None:
    """Same keys in the same order, dtypes and shapes; boxes within 1e-6, areas within 1e-4 relative,
    everything else (class labels, iscrowd, image ids, sizes, masks) exactly."""
    assert len(direct) == len(expected)
    for ours, theirs in zip(direct, expected):
        assert list(ours) == list(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
            if key == "boxes":
                torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
            elif key == "area":
                torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=0)
            else:
                assert torch.equal(ours[key], theirs[key]), key


def compare_batches(new, old, collate, processor, batch_size=4, epochs=range(6), **kwargs) -> int:
    """Collate `new`'s samples and run `old`'s through the processor for every epoch; the labels agree
    and so do the pixels. Returns the number of objects compared."""
    objects = 0
    for epoch in epochs:
        new.set_epoch(epoch)
        old.set_epoch(epoch)
        for start in range(0, len(new), batch_size):
            indices = range(start, min(start + batch_size, len(new)))
            samples, references = [new[i] for i in indices], [old[i] for i in indices]
            assert all(isinstance(s["annotation"], AugmentedAnnotation) for s in samples)
            batch = collate(samples)
            expected = processor(
                [s["image"] for s in references],
                annotations=[s["annotation"] for s in references],
                do_resize=False,
                **kwargs,
            )
            assert list(batch) == list(expected)
            assert torch.equal(batch["pixel_values"], expected["pixel_values"])
            assert torch.equal(batch["pixel_mask"], expected["pixel_mask"])
            assert_same_labels(batch["labels"], expected["labels"])
            objects += sum(len(labels["class_labels"]) for labels in expected["labels"])
    return objects


# ---------------------------------------------------------------------------------------------------
# Data: the built-in set, and the same with crowds and boxes the collator must clip or drop
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detection_split(shapes, tmp_path_factory):
    return load_detection_dataset(shapes, split="train", cache_dir=tmp_path_factory.mktemp("det"))["train"]


@pytest.fixture(scope="module")
def panoptic_split(shapes, tmp_path_factory):
    return load_panoptic_dataset(shapes, split="train", cache_dir=tmp_path_factory.mktemp("pan"))["train"]


def with_crowds(split):
    """Every other object of every other image marked as a crowd."""
    objects = [dict(o) for o in list(split["objects"])]
    for number, obj in enumerate(objects):
        obj["iscrowd"] = [int(number % 2 == 0 and k % 2 == 0) for k in range(len(obj["id"]))]
    return split.remove_columns("objects").add_column("objects", objects).cast(split.features)


class Disturb:
    """The paper's augmentation, then boxes moved across the border, emptied (zero width or height) or
    moved off the image, drawn from the seeded generator, without clamping or sanitizing: the filtering
    under test is the labels'."""

    def __init__(self, scale: float) -> None:
        self.augment = detr_train_transforms(scale)

    def __call__(self, sample):
        out = self.augment(sample)
        boxes = out["boxes"]
        height, width = boxes.canvas_size
        corners = boxes.as_subclass(torch.Tensor).clone()
        kind = torch.randint(0, 5, (len(corners),))
        shift = (torch.rand(len(corners), 2) - 0.5) * torch.tensor([width, height])
        corners[kind == 1] += shift[kind == 1].repeat(1, 2)  # across the border (clipped)
        corners[kind == 2, 2] = corners[kind == 2, 0]  # zero width (dropped)
        corners[kind == 3, 3] = corners[kind == 3, 1]  # zero height (dropped)
        corners[kind == 4] += torch.tensor([width + 3.0, 0, width + 3.0, 0])  # off the image (dropped)
        out["boxes"] = tv_tensors.wrap(corners, like=boxes)
        return out


class FixedCrop(v2.Transform):
    """A crop of the given region, for samples whose objects all fall outside it."""

    def __init__(self, top: int, left: int, height: int, width: int) -> None:
        super().__init__()
        self.region = {"top": top, "left": left, "height": height, "width": width}

    def transform(self, inpt, params):
        return self._call_kernel(F.crop, inpt, **self.region)


def crop_away_everything() -> v2.Transform:
    """A crop of a 3x3 corner and the paper's clamping and sanitizing: no box survives."""
    sanitize = v2.SanitizeBoundingBoxes(min_size=5, labels_getter=per_box_fields)
    return v2.Compose([FixedCrop(0, 0, 3, 3), v2.ClampBoundingBoxes(), sanitize])


def per_box_fields(sample):
    return tuple(sample[k] for k in ("labels", "iscrowd", "ids"))


# ---------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("scale", "policy"), [(0.16, "paper"), (0.4, "paper"), (0.25, "flip")])
def test_detection_labels_from_tensors_are_the_processors(detection_split, scale, policy):
    transforms = detr_train_transforms(scale, policy)
    processor = HfDetrImageProcessor(do_resize=False)
    new = DetectionDataset(detection_split, transforms, seed=7)
    old = ProcessorRouteDetection(detection_split, transforms, seed=7)
    objects = compare_batches(new, old, DetectionCollator(processor, do_resize=False), processor)
    assert objects > 40


def test_crowds_and_boxes_across_the_border_are_filtered_as_the_processor_does(detection_split):
    split = with_crowds(detection_split)
    processor = HfDetrImageProcessor(do_resize=False)
    new = DetectionDataset(split, Disturb(0.3), seed=2)
    old = ProcessorRouteDetection(split, Disturb(0.3), seed=2)
    dropped = kept = 0
    for epoch in range(8):
        new.set_epoch(epoch)
        for index in range(len(new)):
            annotation = new[index]["annotation"]
            labels = DetectionCollator(processor, do_resize=False)([new[index]])["labels"][0]
            dropped += len(annotation.ids) - len(labels["class_labels"])
            kept += len(labels["class_labels"])
            assert (labels["boxes"][:, 2:] > 0).all() and labels["iscrowd"].eq(0).all()
    assert dropped > 20 and kept > 20  # crowds, empty boxes and boxes off the image all occurred
    compare_batches(new, old, DetectionCollator(processor, do_resize=False), processor, epochs=range(8))


def test_a_sample_with_every_box_cropped_away_has_empty_labels(detection_split):
    processor = HfDetrImageProcessor(do_resize=False)
    new = DetectionDataset(detection_split, crop_away_everything(), seed=0)
    old = ProcessorRouteDetection(detection_split, crop_away_everything(), seed=0)
    batch = DetectionCollator(processor, do_resize=False)([new[0], new[1]])
    for labels in batch["labels"]:
        assert labels["boxes"].shape == (0, 4) and labels["boxes"].dtype == torch.float32
        assert labels["class_labels"].shape == labels["area"].shape == labels["iscrowd"].shape == (0,)
        assert labels["size"].tolist() == labels["orig_size"].tolist() == [3, 3]
    compare_batches(new, old, DetectionCollator(processor, do_resize=False), processor, epochs=[0])


def test_the_annotation_reads_as_the_coco_dict_it_was(detection_split):
    transforms = detr_train_transforms(0.3)
    new = DetectionDataset(detection_split, transforms, seed=4)
    old = ProcessorRouteDetection(detection_split, transforms, seed=4)
    for index in range(len(new)):
        annotation, expected = new[index]["annotation"], old[index]["annotation"]
        assert isinstance(annotation, AugmentedDetection)
        assert dict(annotation) == expected and annotation["annotations"] == expected["annotations"]
        assert list(annotation) == ["image_id", "annotations"] and len(annotation) == 2


# ---------------------------------------------------------------------------------------------------
# Panoptic
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("scale", "policy"), [(0.16, "paper"), (0.4, "paper"), (0.25, "flip")])
def test_panoptic_labels_from_tensors_are_the_processors(panoptic_split, scale, policy):
    transforms = detr_train_transforms(scale, policy)
    processor = HfDetrImageProcessor(do_resize=False)
    new = PanopticDataset(panoptic_split, transforms, seed=7)
    old = ProcessorRoutePanoptic(panoptic_split, transforms, seed=7)
    collate = DetectionCollator(processor, do_resize=False, format="coco_panoptic")
    objects = compare_batches(new, old, collate, processor, format="coco_panoptic")
    assert objects > 40


def test_panoptic_crowds_and_masks_without_padding(panoptic_split):
    """Crowd segments stay (as the processor keeps them); masks unpadded when the processor does not pad,
    and left out with return_segmentation_masks=False."""
    split = with_crowds(panoptic_split)
    transforms = detr_train_transforms(0.2)
    processor = HfDetrImageProcessor(do_resize=False, do_pad=False)
    new = PanopticDataset(split, transforms, seed=1)
    old = ProcessorRoutePanoptic(split, transforms, seed=1)
    crowds = 0
    for masks in (None, False):
        collate = DetectionCollator(
            processor, do_resize=False, format="coco_panoptic", return_segmentation_masks=masks
        )
        for index in range(len(new)):
            labels = collate([new[index]])["labels"]
            expected = processor(
                old[index]["image"],
                annotations=old[index]["annotation"],
                do_resize=False,
                format="coco_panoptic",
                return_segmentation_masks=masks,
            )["labels"]
            assert_same_labels(labels, expected)
            assert ("masks" in labels[0]) is (masks is None)
            crowds += int(labels[0]["iscrowd"].sum())
    assert crowds > 0


def test_a_panoptic_sample_without_segments_has_empty_labels(panoptic_split):
    drop_all = v2.SanitizeBoundingBoxes(min_size=10_000, labels_getter=per_box_fields)
    processor = HfDetrImageProcessor(do_resize=False)
    new = PanopticDataset(panoptic_split, drop_all, seed=0)
    old = ProcessorRoutePanoptic(panoptic_split, drop_all, seed=0)
    collate = DetectionCollator(processor, do_resize=False, format="coco_panoptic")
    labels = collate([new[0], new[1]])["labels"]
    for sample_labels in labels:
        assert sample_labels["masks"].shape == (0, 128, 128) and sample_labels["boxes"].shape == (0, 4)
    compare_batches(new, old, collate, processor, epochs=[0], format="coco_panoptic")


def test_the_panoptic_annotation_reads_as_the_coco_dict_it_was(panoptic_split):
    transforms = detr_train_transforms(0.3)
    new = PanopticDataset(panoptic_split, transforms, seed=4)
    old = ProcessorRoutePanoptic(panoptic_split, transforms, seed=4)
    for index in range(len(new)):
        annotation, expected = new[index]["annotation"], old[index]["annotation"]
        assert isinstance(annotation, AugmentedPanoptic)
        assert annotation["segments_info"] == expected["segments_info"]
        assert annotation["image_id"] == expected["image_id"]
        assert np.array_equal(annotation["panoptic_image"], expected["panoptic_image"])


# ---------------------------------------------------------------------------------------------------
# What still goes through the processor
# ---------------------------------------------------------------------------------------------------
def test_coco_samples_mixed_batches_resizing_and_kept_annotations_use_the_processor(detection_split):
    processor = HfDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 100})
    augmented = DetectionDataset(detection_split, detr_train_transforms(0.3), seed=3)
    plain = DetectionDataset(detection_split)
    samples = [augmented[0], plain[1], augmented[2]]
    as_coco = [dict(s["annotation"]) if isinstance(s["annotation"], AugmentedAnnotation) else s["annotation"]
               for s in samples]  # fmt: skip
    images = [s["image"] for s in samples]
    for do_resize in (True, False):  # a mixed batch: every annotation through the processor
        batch = DetectionCollator(processor, do_resize=do_resize, keep_annotations=True)(samples)
        expected = processor(images, annotations=as_coco, do_resize=do_resize)
        assert_same_labels(batch["labels"], expected["labels"])
        assert batch["annotations"] == as_coco and all(type(a) is dict for a in batch["annotations"])
    only_augmented = [augmented[0], augmented[2]]
    batch = DetectionCollator(processor)(only_augmented)  # resized by the processor: its route
    expected = processor([s["image"] for s in only_augmented], annotations=[as_coco[0], as_coco[2]])
    assert_same_labels(batch["labels"], expected["labels"])
    assert batch["labels"][0]["size"].max() <= 100
    batch = DetectionCollator(processor, do_resize=False, return_tensors="np")(only_augmented)
    assert isinstance(batch["labels"][0]["boxes"], np.ndarray)


def test_values_the_processor_refuses_are_refused_with_its_message(detection_split, panoptic_split):
    class NotFinite:
        def __call__(self, sample):
            sample["boxes"] = tv_tensors.wrap(sample["boxes"] * float("nan"), like=sample["boxes"])
            return sample

    collate = DetectionCollator(HfDetrImageProcessor(do_resize=False), do_resize=False)
    sample = DetectionDataset(detection_split, NotFinite())[0]
    with pytest.raises(ValueError, match="'bbox' must be 4 finite numbers"):
        collate([sample])
    panoptic = PanopticDataset(panoptic_split, detr_train_transforms(0.2))[0]
    with pytest.raises(ValueError, match="Invalid COCO detection annotations"):
        collate([panoptic])  # a detection collator given panoptic samples, as before


def test_tensor_images_and_plain_tensor_boxes_take_the_image_size(detection_split):
    """A user's transforms may return tensor images and plain tensors for the boxes."""

    def to_tensors(sample):
        out = detr_train_transforms(0.2)(sample)
        return {
            **out,
            "image": F.pil_to_tensor(out["image"]),
            "boxes": out["boxes"].as_subclass(torch.Tensor),
        }

    processor = HfDetrImageProcessor(do_resize=False)
    sample = DetectionDataset(detection_split, to_tensors, seed=1)[0]
    reference = ProcessorRouteDetection(detection_split, to_tensors, seed=1)[0]
    labels = DetectionCollator(processor, do_resize=False)([sample])["labels"]
    expected = processor(reference["image"], annotations=reference["annotation"], do_resize=False)["labels"]
    assert_same_labels(labels, expected)
