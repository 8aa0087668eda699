"""The built-in dataset: synthetic shapes written as a real COCO folder, then loaded like COCO.

"hf-detr shapes v1" (fixed; a new difficulty would be a new version), the main job's set:

| property | value |
|---|---|
| classes | circle, square, triangle (COCO category ids 1, 2, 3) |
| image size | 128 x 128 RGB PNG |
| objects per image | 1 to 3 (uniform) |
| object size | 26 to 64 px (20% to 50% of the image side), uniform |
| overlaps | allowed up to IoU 0.3 between two boxes; later shapes are drawn on top |
| colours | random, at least 80 (of 255) away from the background's mean on some channel |
| backgrounds | random colour + linear gradient + one texture (stripes, checks or blobs) + pixel noise |
| splits | train 2000 images, val 200 images |
| seed | 0 (train and val use different streams); identical files on every machine |
| panoptic | things: the shapes (ids 1-3); stuff: the background, by its texture (ids 4-6) |

Boxes are the tight (x, y, w, h) boxes of the drawn shapes and `area` is the shape's pixel count, as
COCO's segmentation area. The panoptic annotations (`annotations/panoptic_{split}.json` and the PNGs
in `annotations/panoptic_{split}/`, COCO panoptic's layout) give every pixel to the shape drawn last
over it or to the one background segment, whose class is its texture: stripes, checks or blobs. The
folder is written once under `$HF_HOME/hf_detr/builtin/` and then read through the COCO-folder
loaders, so the default exercises the code a COCO user runs.

"hf-detr shapes-new v1" (`--dataset builtin:shapes-new-v1`) is the fine-tuning set: three other
shapes (star, cross, ring; ids 1-3) drawn the same way on the same kind of backgrounds, with 200 train
and 200 val images from seed 1, the "new classes" of a small dataset of one's own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .coco_folder import default_cache_dir

NAME = "shapes-v1"
CLASSES = ("circle", "square", "triangle")
STUFF_CLASSES = ("stripes", "checks", "blobs")  # the background textures, in `_background`'s order
IMAGE_SIZE = 128
OBJECTS_PER_IMAGE = (1, 3)
OBJECT_SIZE = (26, 64)
MAX_OVERLAP_IOU = 0.3
MIN_CONTRAST = 80
SPLIT_SIZES = {"train": 2000, "val": 200}
SEED = 0


@dataclass(frozen=True)
class BuiltinSet:
    """One built-in set: its shapes (COCO category ids 1..), split sizes and seed."""

    name: str
    classes: tuple[str, ...]
    split_sizes: dict[str, int]
    seed: int


BUILTIN_SETS = {
    NAME: BuiltinSet(NAME, CLASSES, SPLIT_SIZES, SEED),
    "shapes-new-v1": BuiltinSet("shapes-new-v1", ("star", "cross", "ring"), {"train": 200, "val": 200}, 1),
}


def builtin_dataset_folder(
    root: str | os.PathLike | None = None,
    split_sizes: dict[str, int] | None = None,
    name: str = NAME,
) -> Path:
    """The COCO folder of the built-in set `name`, written on first use (atomically) and re-used after."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; expected one of {sorted(BUILTIN_SETS)}.")
    spec = BUILTIN_SETS[name]
    split_sizes = split_sizes or spec.split_sizes
    suffix = (
        ""
        if split_sizes == spec.split_sizes
        else "-" + "-".join(f"{k}{v}" for k, v in sorted(split_sizes.items()))
    )
    folder = (
        Path(root)
        if root is not None
        else default_cache_dir() / "builtin" / f"{name}-seed{spec.seed}{suffix}-with-panoptic"
    )
    if (folder / "annotations").is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".incomplete-"))
    write_shapes_coco(staging, split_sizes, spec.seed, spec.classes)
    try:
        staging.rename(folder)
    except OSError:  # written concurrently by another process
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_shapes_coco(
    folder: str | os.PathLike,
    split_sizes: dict[str, int] | None = None,
    seed: int = SEED,
    classes: tuple[str, ...] = CLASSES,
) -> None:
    """Write images, `annotations/instances_{split}.json` and the COCO panoptic annotations of each split."""
    folder = Path(folder)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]
    annotation_id = 1
    for split_index, (split, count) in enumerate(sorted((split_sizes or SPLIT_SIZES).items())):
        rng = np.random.default_rng([seed, split_index])
        (folder / split).mkdir(exist_ok=True)
        (folder / "annotations" / f"panoptic_{split}").mkdir(exist_ok=True)
        images, annotations, panoptic = [], [], []
        for index in range(count):
            image_id = index + 1
            scene = draw_shapes_scene(rng, classes)
            file_name = f"{image_id:06d}.png"
            scene.picture.save(folder / split / file_name, compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
            for category_id, bbox, area in scene.objects:
                annotations.append(
                    {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                     "area": area, "iscrowd": 0}
                )  # fmt: skip
                annotation_id += 1
            segments, png = _panoptic_segments(scene)
            png.save(folder / "annotations" / f"panoptic_{split}" / file_name, compress_level=1)
            panoptic.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
        description = f"hf-detr built-in synthetic shapes ({', '.join(classes)}; seed {seed}), split {split}"
        instances = {"info": {"description": description}, "images": images, "annotations": annotations,
                     "categories": categories}  # fmt: skip
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
        panoptic_json = {"info": {"description": description}, "images": images, "annotations": panoptic,
                         "categories": builtin_panoptic_categories(classes)}  # fmt: skip
        (folder / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(panoptic_json))


def builtin_panoptic_categories(classes: tuple[str, ...] = CLASSES) -> list[dict]:
    """The built-in set's panoptic categories: the shapes (things) and the background textures (stuff)."""
    names = [(name, 1, "shape") for name in classes] + [(name, 0, "background") for name in STUFF_CLASSES]
    return [
        {"id": i + 1, "name": name, "supercategory": group, "isthing": isthing,
         "color": [int(c) for c in np.random.default_rng(i).integers(0, 256, 3)]}
        for i, (name, isthing, group) in enumerate(names)
    ]  # fmt: skip


def _panoptic_segments(scene: ShapesScene) -> tuple[list[dict], PIL.Image.Image]:
    """COCO panoptic segments_info and PNG (id = R + 256 G + 256^2 B) of a scene. Segment ids are
    1000 x category id + the shape's number (0 for the background)."""
    owner = scene.owner  # [H, W]: 0 background, k = the k-th shape
    ids = np.zeros_like(owner, dtype=np.int64)
    segments = []
    parts = [(0, scene.num_classes + 1 + scene.texture)] + [
        (k + 1, category_id) for k, (category_id, _, _) in enumerate(scene.objects)
    ]
    for number, category_id in parts:
        pixels = owner == number
        if not pixels.any():  # a shape hidden by later ones
            continue
        segment_id = 1000 * category_id + number
        ids[pixels] = segment_id
        ys, xs = np.nonzero(pixels)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        segments.append({"id": segment_id, "category_id": category_id, "iscrowd": 0, "bbox": bbox,
                         "area": int(pixels.sum())})  # fmt: skip
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    return segments, PIL.Image.fromarray(rgb)


@dataclass
class ShapesScene:
    """One drawn image: `objects` as (category id, [x, y, w, h], area) of the full shapes, `owner`
    [H, W] the number of the shape each pixel shows (0 = background, k = objects[k - 1]) and the index
    of the background's texture in STUFF_CLASSES (whose category ids follow the `num_classes` shapes')."""

    picture: PIL.Image.Image
    objects: list[tuple[int, list[float], float]]
    owner: np.ndarray
    texture: int
    num_classes: int = len(CLASSES)


def draw_shapes_scene(rng: np.random.Generator, classes: tuple[str, ...] = CLASSES) -> ShapesScene:
    """One image with its objects and which of them each pixel shows (later shapes on top)."""
    background, texture = _background(rng)
    canvas = PIL.Image.fromarray(background)
    owner = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.int32)
    mean_colour = background.reshape(-1, 3).mean(0)
    boxes: list[list[float]] = []
    objects = []
    wanted = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    for _ in range(50 * wanted):  # rejection sampling of overlaps
        if len(objects) == wanted:
            break
        class_index = int(rng.integers(len(classes)))
        size = int(rng.integers(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
        x0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
        y0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
        mask = _shape_mask(classes[class_index], size, rng)
        ys, xs = np.nonzero(mask)
        bbox = [
            float(x0 + xs.min()),
            float(y0 + ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        if any(_iou(bbox, other) > MAX_OVERLAP_IOU for other in boxes):
            continue
        colour = _contrasting_colour(rng, mean_colour)
        layer = PIL.Image.new("RGB", (size, size), tuple(int(c) for c in colour))
        canvas.paste(layer, (x0, y0), PIL.Image.fromarray((mask * 255).astype(np.uint8)))
        boxes.append(bbox)
        objects.append((class_index + 1, bbox, float(mask.sum())))
        owner[y0 : y0 + size, x0 : x0 + size][mask > 0] = len(objects)
    return ShapesScene(canvas, objects, owner, texture, len(classes))


def shapes_clip_frames(num_frames: int, seed: int = SEED, speed: float = 1.5) -> Iterator[np.ndarray]:
    """[IMAGE_SIZE, IMAGE_SIZE, 3] uint8 RGB frames of a camera panning over a 2x2 mosaic of built-in
    scenes, `speed` pixels a frame and back (a test clip: there is no video offline)."""
    rng = np.random.default_rng(seed)
    tiles = [np.asarray(draw_shapes_scene(rng).picture) for _ in range(4)]
    mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)  # [2S, 2S, 3]
    for index in range(num_frames):
        travelled = index * speed % (2 * IMAGE_SIZE)
        x = round(IMAGE_SIZE - abs(IMAGE_SIZE - travelled))  # 0 .. IMAGE_SIZE and back
        y = x // 2
        yield mosaic[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE].copy()


def _shape_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The [size, size] 0/1 mask of one shape filling its square."""
    image = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(image)
    last = size - 1
    if name == "circle":
        draw.ellipse((0, 0, last, last), fill=1)
    elif name == "square":
        draw.rectangle((0, 0, last, last), fill=1)
    elif name == "triangle":  # pointing up, down, left or right
        corners = [(0, last), (last, last), (last / 2, 0)]
        turns = int(rng.integers(4))
        centre = last / 2
        for _ in range(turns):
            corners = [(centre - (y - centre), x) for x, y in corners]
        draw.polygon(corners, fill=1)
    elif name == "star":  # five points, turned at random
        turn = rng.uniform(0, 2 * math.pi / 5)
        radii = [last / 2 if k % 2 == 0 else last / 5 for k in range(10)]
        angles = [turn + k * math.pi / 5 for k in range(10)]
        draw.polygon(
            [(last / 2 + r * math.sin(a), last / 2 - r * math.cos(a)) for r, a in zip(radii, angles)], fill=1
        )
    elif name == "cross":  # a plus sign, arms a third of the side wide
        third = size / 3
        draw.rectangle((third, 0, last - third, last), fill=1)
        draw.rectangle((0, third, last, last - third), fill=1)
    elif name == "ring":  # a disc with a hole half its diameter
        draw.ellipse((0, 0, last, last), fill=1)
        draw.ellipse((size / 4, size / 4, last - size / 4, last - size / 4), fill=0)
    else:
        raise ValueError(f"Unknown built-in shape {name!r}.")
    return np.asarray(image, dtype=np.uint8)


_GRID = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE  # (y, x) in [0, 1)


def _background(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Pixels [H, W, 3] and the texture drawn (0 stripes, 1 checks, 2 blobs)."""
    size = IMAGE_SIZE
    base = rng.uniform(40, 215, 3)
    ys, xs = _GRID
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(angle) * xs + np.sin(angle) * ys)[..., None] * rng.uniform(-40, 40, 3)
    texture_kind = int(rng.integers(3))
    if texture_kind == 0:  # stripes
        period = rng.uniform(6, 20)
        phase = rng.uniform(0, 2 * math.pi)
        direction = rng.uniform(0, math.pi)
        wave = np.sin((np.cos(direction) * xs + np.sin(direction) * ys) * size * 2 * math.pi / period + phase)
        texture = wave[..., None] * rng.uniform(5, 25, 3)
    elif texture_kind == 1:  # checks
        cell = int(rng.integers(6, 20))
        checks = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2).astype(
            np.float32
        )
        texture = (checks[..., None] - 0.5) * rng.uniform(10, 40, 3)
    else:  # blobs: smooth random field
        coarse = rng.normal(0, 1, (8, 8, 3))
        field = np.asarray(
            PIL.Image.fromarray(
                ((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8)
            ).resize((size, size), PIL.Image.BICUBIC),
            np.float32,
        )
        texture = (field / 255 - 0.5) * rng.uniform(20, 50)
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(base + gradient + texture + noise, 0, 255).astype(np.uint8), texture_kind


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background_mean).max() >= MIN_CONTRAST:
            return colour
    return np.where(background_mean > 127, 0, 255)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    intersection = ix * iy
    return intersection / (a[2] * a[3] + b[2] * b[3] - intersection)


__all__ = [
    "BUILTIN_SETS",
    "CLASSES",
    "IMAGE_SIZE",
    "NAME",
    "STUFF_CLASSES",
    "BuiltinSet",
    "ShapesScene",
    "builtin_dataset_folder",
    "builtin_panoptic_categories",
    "draw_shapes_scene",
    "write_shapes_coco",
]
