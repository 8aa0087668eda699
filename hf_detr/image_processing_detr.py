"""HfDetrImageProcessor: images (and COCO annotations) in, padded batches out; predictions back to boxes
and segmentation maps, with transformers' `DetrImageProcessor` signatures and output formats.

Images are loaded and resized in `image_processing_detr_images.py`, annotations converted in
`image_processing_detr_annotations.py`, outputs post-processed in `image_processing_detr_postprocessing.py`:
with this file, part of the self-contained "model files" (relative imports in one direction only).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
)

from .image_processing_detr_annotations import convert_annotation
from .image_processing_detr_images import (
    decode_image,
    displayed_size,
    exif_orientation,
    load_source,
    make_pixels,
)
from .image_processing_detr_postprocessing import (
    SemanticSegmentationPostProcessorOutput,
    checked_outputs,
    checked_target_sizes,
    detr_panoptic_segments,
    object_detections,
    run_length_encoding,
    segments_per_image,
    semantic_maps,
    target_size_list,
)
from .validation_detr import (
    check_bool,
    check_float,
    check_positive_integer,
    check_threshold,
    is_finite_real,
    is_integer,
    limit_from_environment,
)

DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
# The largest image side, in pixels, the processor makes: `size` and `pad_size` values, and every image
# once resized (or unresized, with do_resize=False). 4096 is about 3x the official 1333 longest edge, so
# every DETR setting fits with room to spare, while a mistaken `size` (200000 in a config file) is refused
# before gigabytes are allocated. Raise it with the environment variable HF_DETR_MAX_IMAGE_SIDE=<pixels>,
# or in code by setting this module's `MAX_IMAGE_SIDE` (read at each call).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_SIDE_ENV = "HF_DETR_MAX_IMAGE_SIDE"
_RAISE_LIMIT = f"raise the limit with {MAX_IMAGE_SIDE_ENV}=<pixels>"
SIZE_FORMS = (
    {"shortest_edge", "longest_edge"},
    {"shortest_edge"},
    {"height", "width"},
    {"max_height", "max_width"},
)
ANNOTATION_FORMATS = ("coco_detection", "coco_panoptic")


def get_size_with_aspect_ratio(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """The official DETR rule: shorter side `size`, unless the longer side would exceed `max_size`.

    For extreme aspect ratios, where the rule's rounding would give a shorter side of 0 pixels or a
    longer side beyond `max_size` (the official code and transformers fail or overshoot there), the
    shorter side is at least 1 pixel and the longer at most `max_size`."""
    if max_size is not None:
        min_original, max_original = float(min(height, width)), float(max(height, width))
        if max_original / min_original * size > max_size:
            size = max(1, round(max_size * min_original / max_original))
    if min(height, width) == size:
        new_height, new_width = height, width
    elif width < height:
        new_height, new_width = int(size * height / width), size
    else:
        new_height, new_width = size, int(size * width / height)
    if max_size is not None:
        new_height, new_width = min(new_height, max_size), min(new_width, max_size)
    return max(1, new_height), max(1, new_width)


def resized_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """Output (height, width) of an image resized with a `size` dict; no side is ever under 1 pixel."""
    if "shortest_edge" in size:
        return get_size_with_aspect_ratio(height, width, size["shortest_edge"], size.get("longest_edge"))
    if "max_height" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return max(1, int(height * scale)), max(1, int(width * scale))
    return size["height"], size["width"]


def normalize_size(size: Any, param_name: str = "size") -> dict[str, int]:
    """Accept the transformers size forms (and an int shorter side); reject anything else by name."""
    if is_integer(size) and size > 0:
        size = {"shortest_edge": int(size)}
    if isinstance(size, Mapping):
        size = {k: v for k, v in size.items() if v is not None}
        if "max_size" in size:  # the legacy spelling of longest_edge
            size["longest_edge"] = size.pop("max_size")
        if set(size) in SIZE_FORMS and all(is_integer(v) and v > 0 for v in size.values()):
            return _within_limit({key: int(value) for key, value in size.items()}, param_name)
    raise ValueError(
        f"`{param_name}` must be a positive int (the shorter side) or a dict with keys {{'shortest_edge', "
        f"'longest_edge'}}, {{'height', 'width'}} or {{'max_height', 'max_width'}} and positive integer "
        f"values, got {size!r}."
    )


def max_image_side() -> int:
    """The largest image side in force: HF_DETR_MAX_IMAGE_SIDE when set, else `MAX_IMAGE_SIDE`."""
    return limit_from_environment(MAX_IMAGE_SIDE_ENV, MAX_IMAGE_SIDE, " of pixels")


def _within_limit(size: dict[str, int], param_name: str) -> dict[str, int]:
    """`size`, unless one of its sides exceeds `max_image_side()`: then a ValueError naming `param_name`."""
    limit, largest = max_image_side(), max(size.values())
    if largest > limit:
        raise ValueError(
            f"`{param_name}` {size} asks for a side of {largest} pixels, beyond the limit of {limit} pixels "
            f"({MAX_IMAGE_SIDE_ENV}): use a smaller `{param_name}` (DETR's default size: shorter side 800, "
            f"longer at most 1333), or {_RAISE_LIMIT}."
        )
    return size


def _annotation_list(annotations: Any, num_images: int) -> list[Any] | None:
    """One annotation per image: a single dict becomes a list of one; the count must match."""
    if annotations is None:
        return None
    annotations = [annotations] if isinstance(annotations, Mapping) else list(annotations)
    if len(annotations) != num_images:
        raise ValueError(  # transformers' message
            f"The number of images ({num_images}) and annotations ({len(annotations)}) do not match."
        )
    return annotations


def _check_output_sizes(output_sizes: list[tuple[int, int]], settings: Mapping[str, Any]) -> None:
    """Every image within `max_image_side()` once resized (or unresized), before the batch is allocated."""
    limit = max_image_side()
    for index, (height, width) in enumerate(output_sizes):
        if max(height, width) <= limit:
            continue
        if settings["do_resize"]:  # only a `size` without a longest side lets an image grow this far
            how, fix = f"resized with size={settings['size']}", "give `size` a 'longest_edge'"
        else:
            how, fix = "unresized (do_resize=False)", "resize it (do_resize=True)"
        raise ValueError(
            f"images[{index}] would be {height}x{width} pixels {how}, beyond the limit of {limit} pixels a "
            f"side ({MAX_IMAGE_SIDE_ENV}): {fix}, or {_RAISE_LIMIT}."
        )


def channel_values(name: str, value: Any, positive: bool = False) -> np.ndarray:
    """`image_mean` / `image_std`: one finite number, or one per channel (float64 array)."""
    values = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values or not all(is_finite_real(v) and (v > 0 or not positive) for v in values):
        kind = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"`{name}` must be a number or a list of {kind} (one per channel), got {value!r}.")
    return np.asarray(values, dtype=np.float64)


class HfDetrImageProcessor(BaseImageProcessor):
    r"""Prepares images (and COCO detection or panoptic annotations) for [`HfDetrForObjectDetection`] and
    the segmentation model, and turns their outputs into boxes or segmentation maps.

    Args:
        do_convert_rgb: convert grayscale, RGBA (composited on white), palette and CMYK images to RGB.
        do_resize / size / resample: resize with `{"shortest_edge", "longest_edge"}` (default 800/1333,
            the official rule), `{"height", "width"}` or `{"max_height", "max_width"}`; PIL bilinear.
            No side, asked for or produced, may exceed `MAX_IMAGE_SIDE` (4096 px; the environment
            variable HF_DETR_MAX_IMAGE_SIDE raises it): beyond it a call is refused before allocating.
        do_rescale / rescale_factor: multiply by 1/255. 16-bit images are first brought to 8-bit range.
        do_normalize / image_mean / image_std: ImageNet statistics.
        do_pad / pad_size: pad bottom-right to the batch maximum, or to a fixed `{"height", "width"}`.
        do_convert_annotations: return boxes as (cx, cy, w, h) normalized by the unpadded resized size.
        num_threads: worker threads for decoding and resizing (default: one per 300,000 output pixels,
            at most the CPU count and 8).
        format: the annotation format, "coco_detection" or "coco_panoptic".

    Call it with `images` (PIL images, numpy arrays HWC/CHW, torch tensors, file paths, URLs, or lists
    of them), optional `annotations`, `return_tensors="pt"` or `"np"`, and `device=` to do the work and
    return the batch on a GPU. (An empty list is an error naming `images`; transformers' pipelines fail
    on one with an IndexError of their own before the processor is called.) Annotations:

    - "coco_detection": `{"image_id", "annotations": [{"bbox" (x, y, w, h), "category_id", "area",
      "iscrowd", "segmentation" (polygons or RLE; read with return_segmentation_masks=True)}]}`.
    - "coco_panoptic": `{"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd",
      "area"}]}` with the PNG at `masks_path / file_name` (ids = R + 256 G + 256^2 B), or the PNG
      already decoded under the key `"panoptic_image"` (a PIL image, or an [H, W, 3] RGB / [H, W] id
      array), so that datasets carrying the image need no folder. Masks are returned by default.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    # A hook for checkpoints of other formats, as `HfDetrConfig.checkpoint_resolver` (this file imports no
    # model file, so that a processor's checkpoint carries only the processor's code): None here; the
    # hf_detr package, when installed, sets the one that converts transformers' and the official checkpoints.
    checkpoint_resolver: ClassVar[Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]] | None] = None

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs
    ) -> HfDetrImageProcessor:
        """transformers' `from_pretrained`, after `checkpoint_resolver` (when set) has had its say."""
        name_or_path = pretrained_model_name_or_path
        if cls.checkpoint_resolver is not None:
            name_or_path, kwargs = cls.checkpoint_resolver(name_or_path, kwargs)
        return super().from_pretrained(name_or_path, *args, **kwargs)

    def __init__(
        self,
        do_convert_rgb: bool = True,
        do_resize: bool = True,
        size: Mapping[str, int] | int | None = None,
        resample: int = PILImageResampling.BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | float | None = None,
        image_std: Sequence[float] | float | None = None,
        do_pad: bool = True,
        pad_size: Mapping[str, int] | None = None,
        do_convert_annotations: bool = True,
        num_threads: int | None = None,
        format: str = "coco_detection",
        **kwargs,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        if "max_size" in kwargs or is_integer(size):  # an int is the shorter side, the longer at most 1333
            size = {  # (or the legacy `max_size`), as transformers' DetrImageProcessor reads them
                "shortest_edge": size if is_integer(size) else 800,
                "longest_edge": kwargs.pop("max_size", DEFAULT_SIZE["longest_edge"]),
            }
        super().__init__(**kwargs)
        self.do_convert_rgb = do_convert_rgb
        self.do_resize = do_resize
        self.size = DEFAULT_SIZE if size is None else size
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean
        self.image_std = IMAGENET_DEFAULT_STD if image_std is None else image_std
        self.do_pad = do_pad
        self.pad_size = pad_size
        self.do_convert_annotations = do_convert_annotations
        self.num_threads = num_threads
        self.format = format
        settings = self._settings({})  # every argument checked now, by name, rather than at the first call
        for name in ("size", "pad_size", "resample", "format"):  # kept in their normalised forms
            setattr(self, name, settings[name])
        self.image_mean, self.image_std = settings["image_mean"].tolist(), settings["image_std"].tolist()

    # ------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------
    def __call__(self, images: Any, annotations: Any = None, **kwargs) -> BatchFeature:
        if annotations is None and called_by_pipeline(self, sys._getframe(1)):
            return self._pipeline_features(images, **kwargs)
        return self.preprocess(images, annotations=annotations, **kwargs)

    def _pipeline_features(self, images: Any, **kwargs) -> BatchFeature:
        """`preprocess` for a transformers pipeline: `pixel_values` as a list of [C, H, W] tensors at each
        image's own size, without `pixel_mask`, which the pipeline's collate keeps per image and the model
        batches by size; unless a fixed `pad_size` makes every image one size anyway (as
        `preprocess`, which the collate concatenates)."""
        if kwargs.get("do_pad", self.do_pad) and kwargs.get("pad_size", self.pad_size) is not None:
            return self.preprocess(images, **kwargs)
        features = self.preprocess(images, **{**kwargs, "do_pad": False})
        features["pixel_values"] = list(features["pixel_values"])  # one [C, H, W] per image (views)
        return features

    def preprocess(
        self,
        images: Any,
        annotations: Mapping | Sequence[Mapping] | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        input_data_format: str | None = None,
        input_channel_order: str = "rgb",
        return_segmentation_masks: bool | None = None,
        masks_path: str | os.PathLike | None = None,
        **overrides,
    ) -> BatchFeature:
        """Resize, rescale, normalize and pad `images`; convert `annotations` to `labels`.

        Returns a `BatchFeature` with `pixel_values` [B, C, H, W] float32, `pixel_mask` [B, H, W] bool
        (True = real pixel; transformers returns int64 ones and zeros, which every model reads alike)
        and, with annotations, `labels`: one dict per image with `class_labels`, `boxes`, `area`,
        `iscrowd`, `orig_size`, `size`, `image_id`, and with masks (panoptic by default, detection with
        `return_segmentation_masks=True`) `masks` [n, H, W] bool, resized and padded with the image.
        `masks_path` is the folder of the panoptic PNGs. `input_channel_order="bgr"` reads numpy arrays
        and tensors as BGR(A), as OpenCV gives them (PIL images and files have their own modes). Any
        constructor argument can be overridden for this call. Without padding, images of different sizes
        come back as a list (which the models take too, batching images by size); transformers' pipelines
        always get that list (`_pipeline_features`).
        """
        settings = self._settings(overrides)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        sources = [
            load_source(image, index, input_data_format, input_channel_order)
            for index, image in enumerate(_as_list(images))
        ]
        if not sources:
            raise ValueError("`images` is empty: pass at least one image.")
        annotations = _annotation_list(annotations, len(sources))
        if device is None:
            device = next(
                (s.tensor.device for s in sources if s.tensor is not None and s.tensor.is_cuda), "cpu"
            )
        device = torch.device(device)

        output_sizes = [
            resized_size(s.height, s.width, settings["size"])
            if settings["do_resize"]
            else (s.height, s.width)
            for s in sources
        ]
        _check_output_sizes(output_sizes, settings)
        pixel_values, pixel_mask = make_pixels(sources, output_sizes, settings, device)
        data = {"pixel_values": pixel_values}
        if pixel_mask is not None:
            data["pixel_mask"] = pixel_mask
        if annotations is not None:
            padded_size = tuple(pixel_values.shape[-2:]) if pixel_mask is not None else None
            options = {
                "annotation_format": settings["format"],
                "normalize_boxes": settings["do_convert_annotations"],
                "return_masks": return_segmentation_masks,
                "masks_path": masks_path,
            }
            data["labels"] = [
                convert_annotation(annotation, index, (s.height, s.width), size, padded_size, **options)
                for index, (annotation, s, size) in enumerate(zip(annotations, sources, output_sizes))
            ]
        if return_tensors == "np":
            data = _to_numpy(data)
        return BatchFeature(data=data)

    def _settings(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        names = (
            "do_convert_rgb", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "do_pad", "pad_size", "do_convert_annotations", "num_threads", "format",
        )  # fmt: skip
        unknown = set(overrides) - set(names)
        if unknown:
            raise TypeError(
                f"HfDetrImageProcessor got unexpected argument(s) {sorted(unknown)}; valid: {list(names)}."
            )
        # as transformers: an override of None means the processor's own value
        settings = {
            name: getattr(self, name) if overrides.get(name) is None else overrides[name] for name in names
        }
        for name in names:
            if name.startswith("do_"):  # the on/off switches
                settings[name] = check_bool(name, settings[name], error=TypeError)
        settings["size"] = normalize_size(settings["size"])
        pad_size = settings["pad_size"]
        if pad_size is not None:
            settings["pad_size"] = normalize_size(pad_size, "pad_size")
            if set(settings["pad_size"]) != {"height", "width"}:
                raise ValueError(f"`pad_size` must be a dict with 'height' and 'width', got {pad_size!r}.")
        resample, filters = settings["resample"], [int(member) for member in PILImageResampling]
        if not is_integer(resample) or int(resample) not in filters:
            raise ValueError(
                f"`resample` must be one of PIL's filters {filters} (PILImageResampling), got {resample!r}."
            )
        settings["resample"] = int(resample)
        settings["rescale_factor"] = check_float("rescale_factor", settings["rescale_factor"], positive=True)
        settings["image_mean"] = channel_values("image_mean", settings["image_mean"])
        settings["image_std"] = channel_values("image_std", settings["image_std"], positive=True)
        settings["num_threads"] = check_positive_integer("num_threads", settings["num_threads"])
        given = settings["format"]
        settings["format"] = getattr(given, "value", given)  # transformers' AnnotationFormat enum or a string
        if settings["format"] not in ANNOTATION_FORMATS:
            raise ValueError(f"`format` must be one of {list(ANNOTATION_FORMATS)}, got {given!r}.")
        return settings

    # ------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------
    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Model outputs -> per image `{"scores", "labels", "boxes"}` with absolute (x0, y0, x1, y1) boxes.

        As the official `PostProcess`: softmax, drop the no-object column, best class per query. Boxes are
        scaled to `target_sizes` ((height, width) per image, usually the original sizes) and clipped to
        the image; without `target_sizes` they stay normalized in [0, 1]. With `top_k`, the best `top_k`
        (query, class) pairs over all queries and classes are taken first, then `threshold` applies.
        """
        return object_detections(outputs, threshold, target_sizes, top_k)

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Segmentation outputs -> one class map [H, W] per image (transformers' signature and output).

        The score of class c at a pixel is the sum over queries of p(c | query) (softmax without the
        no-object column) times the query's mask probability; maps are resized (bilinear) to
        `target_sizes` before the argmax. With `return_segmentation_scores`, each item also carries
        `segmentation_scores` [K, H, W].
        """
        results = semantic_maps(outputs, target_sizes)
        if return_segmentation_scores:
            return results
        return [result["segmentation"] for result in results]

    def post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        return_coco_annotation: bool | None = False,
    ) -> list[dict[str, Any]]:
        """Segmentation outputs -> per image `{"segmentation", "segments_info"}`, one segment per kept query.

        As `post_process_panoptic_segmentation` without fusing. With `return_coco_annotation`,
        `segmentation` is transformers' run-length form: for each segment id in increasing order (0 = no
        segment), `[start, length, start, length, ...]` over the row-major pixels, starts counted from 1.
        """
        results = segments_per_image(
            outputs, threshold, mask_threshold, overlap_mask_area_threshold, set(), target_sizes
        )
        if return_coco_annotation:
            for result in results:
                result["segmentation"] = run_length_encoding(result["segmentation"])
        return results

    def post_process_panoptic_segmentation(
        self,
        outputs: Any,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | Sequence[int] | None = None,
        target_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        processed_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        rule: str = "detr",
    ) -> list[dict[str, Any]]:
        """Segmentation outputs -> per image `{"segmentation" [H, W] int32, "segments_info"}`.

        `rule="detr"` (default), the official DETR's `PostProcessPanoptic`: keep queries whose best
        class (no-object included) is an object with probability above `threshold` (default 0.85);
        resize their mask logits (bilinear) to the image's processed size; give each pixel to the
        query of the highest mask logit (no score weighting); merge the queries of one stuff class
        (`label_ids_to_fuse`) into the first; resize that map (nearest) to `target_sizes`; then drop
        queries of 4 pixels or less and make the map again (without merging) until none is that small.
        `processed_sizes` are the images' (height, width) as the model saw them, unpadded (the
        official `processed_sizes`); by default, the processor's resize of `target_sizes` (the images'
        original sizes, as this processor prepares them), else the masks' 4x. `mask_threshold` and
        `overlap_mask_area_threshold` are not used by this rule.

        `rule="transformers"`, transformers' `DetrImageProcessor` rule (from MaskFormer): keep queries
        as above (`threshold` default 0.5); weigh each mask probability by its query's score and give
        every pixel to the best query; a query becomes a segment if it wins pixels and more than
        `overlap_mask_area_threshold` of its own pixels (weighted probability >= `mask_threshold`);
        queries of a class in `label_ids_to_fuse` share one segment; resized (bilinear, on the
        probabilities) to `target_sizes`. Unlike transformers, a segment after a fused one never
        reuses an id already taken; -1 everywhere when no query passes `threshold`.

        `segmentation` holds segment ids from 1 (0: no segment); `segments_info`: per segment, `id`,
        `label_id`, `was_fused` (its class is in `label_ids_to_fuse`), `score` (rounded to 6 decimals).
        """
        fuse = _label_ids(label_ids_to_fuse)
        if rule == "transformers":
            threshold = 0.5 if threshold is None else threshold
            return segments_per_image(
                outputs, threshold, mask_threshold, overlap_mask_area_threshold, fuse, target_sizes
            )
        if rule != "detr":
            raise ValueError(f"`rule` must be 'detr' (the official DETR's) or 'transformers', got {rule!r}.")
        check_threshold("mask_threshold", mask_threshold)  # unused by this rule, but never silently wrong
        check_threshold("overlap_mask_area_threshold", overlap_mask_area_threshold)
        logits, mask_logits = checked_outputs(outputs, "pred_masks")
        targets = target_size_list(target_sizes, len(logits))
        if processed_sizes is not None:
            processed = checked_target_sizes(processed_sizes, len(logits), integer=True)
        else:
            processed = [self._processed_size(target, mask_logits.shape[-2:]) for target in targets]
        threshold = 0.85 if threshold is None else threshold
        return detr_panoptic_segments(logits, mask_logits, threshold, fuse, processed, targets)

    def _processed_size(self, target: tuple[int, int] | None, mask_size: Sequence[int]) -> tuple[int, int]:
        """One image's default `processed_sizes` (see `post_process_panoptic_segmentation`; stride 4)."""
        if target is None:
            return 4 * int(mask_size[0]), 4 * int(mask_size[1])
        return resized_size(*target, self.size) if self.do_resize else tuple(target)


# ----------------------------------------------------------------------------------------------------
# Input helpers
# ----------------------------------------------------------------------------------------------------
def _label_ids(label_ids_to_fuse: Any) -> set[int]:
    """`label_ids_to_fuse`: None or a collection of integer class ids."""
    labels = set() if label_ids_to_fuse is None else label_ids_to_fuse
    if not isinstance(labels, (set, frozenset, list, tuple)) or not all(map(is_integer, labels)):
        raise ValueError(
            f"`label_ids_to_fuse` must be a set or list of int class ids, got {label_ids_to_fuse!r}."
        )
    return {int(label) for label in labels}


def _as_list(images: Any) -> list[Any]:
    """A single image or a list of images (a 4-D array or tensor is a batch)."""
    if isinstance(images, (list, tuple)):
        for index, item in enumerate(images):
            if isinstance(item, (list, tuple)):
                raise ValueError(f"images[{index}] is a nested list; pass a flat list of images.")
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


# transformers pipelines (module, class) whose `preprocess` calls the processor on one image
PIPELINES = (
    ("transformers.pipelines.object_detection", "ObjectDetectionPipeline"),
    ("transformers.pipelines.image_segmentation", "ImageSegmentationPipeline"),
)


def called_by_pipeline(processor: Any, frame: FrameType) -> bool:
    """Whether `frame` (the caller of `processor`) is the `preprocess` of one of transformers' PIPELINES
    that holds `processor` and a model whose `forward` takes per-image lists (`accepts_image_lists`).

    transformers offers no hook for this: batching these pipelines concatenates each image's
    `pixel_values` tensor (no padding: images of different sizes fail) and keeps values of other types,
    such as lists, per image. A pipeline class not imported yet cannot be the caller (`sys.modules` is
    read, nothing is imported)."""
    for module_name, class_name in PIPELINES:
        pipeline_class = getattr(sys.modules.get(module_name), class_name, None)
        preprocess = getattr(pipeline_class, "preprocess", None)
        if frame.f_code == getattr(preprocess, "__code__", None):
            pipeline = frame.f_locals.get("self")
            model = getattr(pipeline, "model", None)
            return (
                getattr(pipeline, "image_processor", None) is processor
                and getattr(model, "accepts_image_lists", False) is True
            )
    return False


def _to_numpy(value: Any) -> Any:
    """Every tensor in (nested lists and dicts of) `value` as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.cpu().numpy()
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value


__all__ = ["HfDetrImageProcessor", "decode_image", "displayed_size", "exif_orientation"]
