"""A seeded campaign of broken folders, files, checkpoints and inputs (the kinds of issue 36), walked as
a user meets them: `load_detection_dataset` and the training data path, `--resume-from-checkpoint`,
the processor, the model and post-processing.

Each case ends as one of: a clean error (ValueError, OSError or hf_detr's CheckpointError whose
message names the file, field or setting), a counted skip (a logged count, nothing wrong loaded), a
correct acceptance (checked: boxes inside the image, finite 3-channel pixels), or bad (anything else:
another exception, a payload that ran, bytes from outside the dataset folder in the cache, a wrong
result). The campaign passes with 0 bad. HF_DETR_CAMPAIGN_CASES sets the number of cases (default
48), HF_DETR_CAMPAIGN_SEED the seed (36); HF_DETR_CAMPAIGN_REPORT=path writes the counts as JSON.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from test_checkpoint_security import (  # noqa: F401  `finished` is a fixture (one 4-step run)
    PLANTED,
    WRITTEN,
    finished,
    linked_copy,
    payload_bytes,
    replace,
    resume,
)
from test_data import make_coco_folder
from test_data_reading import MARKER, coco_with_links, voc_with_links, write_outside, yolo_with_links
from test_odd_data import JSON_ERRORS, OBJECT_SKIPS, YAML_ERRORS, coco_json

from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.data import DetectionDataset, detr_train_transforms, load_detection_dataset
from hf_detr.training.checkpoints import CheckpointError, checkpoint_path

CASES = int(os.environ.get("HF_DETR_CAMPAIGN_CASES", "48"))
SEED = int(os.environ.get("HF_DETR_CAMPAIGN_SEED", "36"))
OUTCOMES = ("clean error", "counted skip", "accepted", "bad")


@dataclass
class Case:
    """One generated case: `attempt()` does what the user does; `names` must appear in an error's
    message; `check(result)` judges an acceptance; `leaked()` is true when it did harm anyway."""

    kind: str
    label: str
    attempt: Callable[[], object]
    names: list[str]
    check: Callable[[object], bool] = lambda _: True
    leaked: Callable[[], bool] = lambda: False
    skip_words: tuple[str, ...] = ("skipped", "ignored", "not usable")
    notes: list[str] = field(default_factory=list)


def judge(case: Case, log: str) -> str:
    """Run a case and name its outcome."""
    try:
        result = case.attempt()
    except (ValueError, OSError, CheckpointError) as error:
        named = any(name in str(error) for name in case.names)
        return "clean error" if named and not case.leaked() else "bad"
    except Exception as error:  # anything else is the failure this campaign looks for
        case.notes.append(f"{type(error).__name__}: {error}")
        return "bad"
    if case.leaked() or not case.check(result):
        return "bad"
    return "counted skip" if any(word in log().lower() for word in case.skip_words) else "accepted"


# ---------------------------------------------------------------------------------------------------
# Data: every record loaded, decoded and augmented as training reads it
# ---------------------------------------------------------------------------------------------------
def train_through(root: Path, cache: Path) -> list[dict]:
    """Load every split and run every record through the training transforms (the paper's)."""
    samples = []
    for split in load_detection_dataset(root, cache_dir=cache).values():
        dataset = DetectionDataset(split, transforms=detr_train_transforms(0.1, "paper"), seed=0)
        samples += [dataset[index] for index in range(len(dataset))]
    return samples


def sane_samples(samples: list[dict | None]) -> bool:
    """Every decoded sample: finite 3-channel pixels, boxes (x, y, w, h) inside the image; an
    undecodable one (None) was a counted skip."""
    for sample in samples:
        if sample is None:
            continue
        image = sample["image"]
        pixels = (
            image.float() if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image)).float()
        )
        height, width = pixels.shape[-2:] if isinstance(image, torch.Tensor) else pixels.shape[:2]
        channels = pixels.shape[0] if isinstance(image, torch.Tensor) else pixels.shape[-1]
        if channels != 3 or pixels.ndim != 3 or not torch.isfinite(pixels).all():
            return False
        for annotation in sample["annotation"]["annotations"]:
            x, y, w, h = annotation["bbox"]
            if not (x >= -1e-3 and y >= -1e-3 and x + w <= width + 1e-3 and y + h <= height + 1e-3):
                return False
    return True


def json_case(rng: random.Random, tmp: Path) -> Case:
    name = rng.choice(sorted(JSON_ERRORS))
    root = make_coco_folder(tmp / "coco")
    JSON_ERRORS[name][0](coco_json(root))
    return Case("COCO json", name, lambda: train_through(root, tmp / "cache"), [str(coco_json(root))])


def object_case(rng: random.Random, tmp: Path) -> Case:
    name = rng.choice(sorted(OBJECT_SKIPS))
    good = {"id": 90, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
    root = make_coco_folder(tmp / "coco", extra_annotations=[{**good, **OBJECT_SKIPS[name][0]}])
    return Case("annotation field or box", name, lambda: train_through(root, tmp / "cache"), [], sane_samples)


def random_box(rng: random.Random, width: int, height: int) -> tuple[str, list[float]]:
    """A box of one of the shapes exports contain: inside, overshooting by a pixel, huge, non-finite,
    wholly outside, negative."""
    shape = rng.choice(["inside", "1 px overshoot", "huge", "non-finite", "outside", "negative size"])
    x, y = rng.uniform(0, width - 4), rng.uniform(0, height - 4)
    box = {
        "inside": [x, y, rng.uniform(1, width - x), rng.uniform(1, height - y)],
        "1 px overshoot": [x, y, width - x + 1, height - y + 1],
        "huge": [x, y, 10 ** rng.uniform(4, 30), 5],
        "non-finite": [x, y, rng.choice([float("nan"), float("inf")]), 5],
        "outside": [width + rng.uniform(1, 50), y, 5, 5],
        "negative size": [x, y, -rng.uniform(1, 10), 5],
    }[shape]
    return shape, box


def box_case(rng: random.Random, tmp: Path) -> Case:
    shape, box = random_box(rng, 64, 48)  # image 1 of make_coco_folder is 64x48
    extra = {"id": 90, "image_id": 1, "category_id": 3, "bbox": box, "area": 25.0, "iscrowd": 0}
    root = make_coco_folder(tmp / "coco", extra_annotations=[extra])
    return Case("box", shape, lambda: train_through(root, tmp / "cache"), [], sane_samples)


def image_bytes(kind: str, rng: random.Random) -> tuple[bytes, tuple[int, int], str]:
    """(file bytes, the displayed (width, height), suffix) of an image file of `kind`."""
    width, height = rng.randint(20, 90), rng.randint(20, 90)
    base = PIL.Image.fromarray(
        np.random.default_rng(rng.randint(0, 99)).integers(0, 255, (height, width, 3), np.uint8)
    )
    buffer = io.BytesIO()
    if kind == "16-bit PNG":
        PIL.Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257).save(buffer, "PNG")
    elif kind == "EXIF-rotated JPEG":
        exif = PIL.Image.Exif()
        exif[0x0112] = 6
        base.save(buffer, "JPEG", exif=exif)
        width, height = height, width
    elif kind in ("CMYK JPEG", "palette PNG", "RGBA PNG", "grayscale PNG", "GIF"):
        mode, fmt = {"CMYK JPEG": ("CMYK", "JPEG"), "palette PNG": ("P", "PNG"), "RGBA PNG": ("RGBA", "PNG"),
                     "grayscale PNG": ("L", "PNG"), "GIF": ("P", "GIF")}[kind]  # fmt: skip
        base.convert(mode).save(buffer, fmt)
    elif kind == "very long":
        width, height = rng.choice([(20000, 10), (10, 20000)])
        PIL.Image.new("RGB", (width, height), (90, 20, 200)).save(buffer, "PNG")
    else:  # "0-byte", "truncated PNG": files that cannot be decoded
        base.save(buffer, "PNG")
        data = buffer.getvalue()
        return (b"" if kind == "0-byte" else data[: rng.randint(10, len(data) - 10)]), (width, height), ".png"
    return (
        buffer.getvalue(),
        (width, height),
        ".jpg" if "JPEG" in kind else (".gif" if kind == "GIF" else ".png"),
    )


IMAGE_KINDS = ["16-bit PNG", "EXIF-rotated JPEG", "CMYK JPEG", "palette PNG", "RGBA PNG", "grayscale PNG",
               "GIF", "very long", "0-byte", "truncated PNG"]  # fmt: skip


def image_case(rng: random.Random, tmp: Path) -> Case:
    kind = rng.choice(IMAGE_KINDS)
    data, (width, height), suffix = image_bytes(kind, rng)
    root = make_coco_folder(tmp / "coco")
    (root / "train" / f"odd{suffix}").write_bytes(data)
    coco = json.loads(coco_json(root).read_text())
    coco["images"].append({"id": 9, "file_name": f"odd{suffix}", "width": width, "height": height})
    box = [1, 1, min(8, width - 1), min(8, height - 1)]
    coco["annotations"].append(
        {"id": 99, "image_id": 9, "category_id": 3, "bbox": box, "area": 1.0, "iscrowd": 0}
    )
    coco_json(root).write_text(json.dumps(coco))
    return Case("image file", kind, lambda: train_through(root, tmp / "cache"), [], sane_samples)


def symlink_case(rng: random.Random, tmp: Path) -> Case:
    layout, build = rng.choice(
        [("COCO", coco_with_links), ("YOLO", yolo_with_links), ("VOC", voc_with_links)]
    )
    outside = write_outside(tmp / "outside")
    build(tmp / "data", outside)
    cache = tmp / "cache"

    def leaked() -> bool:
        return any(MARKER.encode() in p.read_bytes() for p in cache.rglob("*") if p.is_file())

    return Case(
        "symlink out of the folder",
        layout,
        lambda: train_through(tmp / "data", cache),
        [],
        sane_samples,
        leaked,
    )


def yaml_case(rng: random.Random, tmp: Path) -> Case:
    name = rng.choice(sorted(YAML_ERRORS))
    root = tmp / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    PIL.Image.new("RGB", (20, 10)).save(root / "images" / "a.png")
    (root / "data.yaml").write_text(YAML_ERRORS[name][0])
    return Case("YOLO data.yaml", name, lambda: train_through(root, tmp / "cache"), [str(root / "data.yaml")])


# ---------------------------------------------------------------------------------------------------
# Checkpoints and inference inputs
# ---------------------------------------------------------------------------------------------------
def checkpoint_case(rng: random.Random, tmp: Path, reference_run: Path, shapes: Path) -> Case:
    name, kind = rng.choice(WRITTEN + PLANTED), rng.choice(["pickle", "torch"])
    checkpoint = linked_copy(
        checkpoint_path(reference_run / "checkpoints", 2), tmp / "checkpoints" / "step-2"
    )
    marker = tmp / "marker"
    replace(checkpoint, name, payload_bytes(kind, marker, tmp / "scratch"))
    return Case("checkpoint file", f"{name} as a {kind}", lambda: resume(tmp / "run", shapes, checkpoint),
                [name], leaked=marker.exists)  # fmt: skip


TINY = {"backbone": "resnet18", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 3, "num_labels": 2}  # fmt: skip


def inference_case(rng: random.Random, tmp: Path) -> Case:
    kind = rng.choice(["processor size", "threshold", "encoder tokens", "pad size"])
    if kind == "processor size":
        side = rng.choice([5000, 200_000, 10**6])
        return Case("inference input", f"shortest_edge {side}",
                    lambda: HfDetrImageProcessor(size={"shortest_edge": side}), ["size", "shortest_edge"])  # fmt: skip
    if kind == "pad size":
        side = rng.choice([4097, 10**5])
        return Case("inference input", f"pad_size {side}",
                    lambda: HfDetrImageProcessor(pad_size={"height": side, "width": 64}), ["pad_size"])  # fmt: skip
    if kind == "threshold":
        value = rng.choice([-0.5, 1.5, float("nan"), 7.0])
        outputs = {"logits": torch.randn(1, 3, 3), "pred_boxes": torch.rand(1, 3, 4)}
        return Case("inference input", f"threshold {value}",
                    lambda: HfDetrImageProcessor().post_process_object_detection(outputs, value), ["threshold"])  # fmt: skip
    side = rng.choice([4200, 6000, 8000])  # stride 32: (side / 32)^2 encoder tokens, beyond 16384
    model = HfDetrForObjectDetection(HfDetrForObjectDetection.config_class(**TINY)).eval()
    pixels = torch.zeros(1, 3, 1, 1).expand(1, 3, side, side)  # no memory: refused before any compute
    return Case(
        "inference input", f"{side}x{side} pixels", lambda: model(pixel_values=pixels), ["MAX_ENCODER_TOKENS"]
    )


DATA_KINDS = [json_case, object_case, box_case, image_case, symlink_case, yaml_case, inference_case]


def generate(rng: random.Random, tmp: Path, index: int, reference_run: Path, shapes: Path) -> Case:
    """Case `index`: every eighth a checkpoint, the others one of DATA_KINDS in turn, parameters drawn."""
    folder = tmp / f"case-{index:04d}"
    folder.mkdir()
    if index % 8 == 7:
        return checkpoint_case(rng, folder, reference_run, shapes)
    return DATA_KINDS[index % len(DATA_KINDS)](rng, folder)


def test_the_seeded_campaign_ends_every_case_cleanly(tmp_path, caplog, finished, shapes):  # noqa: F811
    rng = random.Random(SEED)
    counts: collections.Counter = collections.Counter()
    bad = []
    for index in range(CASES):
        case = generate(rng, tmp_path, index, finished, shapes)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_detr"):
            outcome = judge(case, lambda: caplog.text)
        counts[case.kind, outcome] += 1
        if outcome == "bad":
            bad.append(f"{case.kind} / {case.label}: {case.notes or 'wrong result or no file/field named'}")
    per_kind = {kind: {o: counts[kind, o] for o in OUTCOMES} for kind in sorted({k for k, _ in counts})}
    total = {o: sum(row[o] for row in per_kind.values()) for o in OUTCOMES}
    print(f"\ncampaign (seed {SEED}): {CASES} cases, {total}; per kind {per_kind}")
    if os.environ.get("HF_DETR_CAMPAIGN_REPORT"):
        report = {"seed": SEED, "cases": CASES, "total": total, "per_kind": per_kind}
        Path(os.environ["HF_DETR_CAMPAIGN_REPORT"]).write_text(json.dumps(report, indent=1))
    assert total["clean error"] and total["counted skip"] and total["accepted"], total  # every outcome seen
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_every_image_kind_of_the_campaign_is_read_or_skipped(tmp_path, caplog, kind):
    """Each image kind once, whatever the seed draws."""
    case = None
    rng = random.Random(SEED)
    while case is None or case.label != kind:
        case = image_case(rng, tmp_path / f"try-{rng.random():.6f}")
    with caplog.at_level(logging.WARNING, logger="hf_detr"):
        assert judge(case, lambda: caplog.text) != "bad", case.notes
