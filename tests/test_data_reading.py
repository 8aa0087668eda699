"""Dataset folders leak nothing, and every path sees the same pixels (issue 36).

A symlinked image, label, xml or folder whose real path leaves a COCO, YOLO or Pascal VOC folder is a
counted skip whose bytes reach no cache (a symlink that stays inside works), also when a stored path
is decoded; a 16-bit PNG and an EXIF-rotated JPEG decode to the same pixels in training and
evaluation, in the processor and in hf-detr-predict, as displayed, with their boxes on their objects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest
from datasets import Image
from test_data_formats import voc_xml, write_coco, write_voc, write_yolo, yolo_lines

from hf_detr import HfDetrImageProcessor
from hf_detr.data import DetectionDataset, class_names, load_detection_dataset
from hf_detr.image_processing_detr import decode_image

WARN = {"level": logging.WARNING, "logger": "hf_detr.data"}
MARKER = "hf-detr-outside-4f1c9b"  # in the bytes of every file outside the dataset folder
OUTSIDE = "whose file leads outside the dataset folder (a symlink)"
ONE_IMAGE = {"train": [("a", 64, 48, [("cat", [4, 6, 20, 10], 0)])]}


def write_outside(folder: Path) -> Path:
    """Files outside the dataset, each carrying MARKER: two decodable PNGs of the dataset's image size
    (one in a sub-folder), a file that is no image, an xml and a label file."""
    (folder / "dir").mkdir(parents=True)
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("secret", MARKER)
    for path in (folder / "secret.png", folder / "dir" / "b.png"):
        PIL.Image.new("RGB", (64, 48), (200, 10, 10)).save(path, pnginfo=info)
    (folder / "passwd").write_text(f"root:x:0:0:{MARKER}:/root:/bin/sh\n")
    (folder / "evil.xml").write_text(voc_xml("e.png", 64, 48, [(MARKER, [1, 1, 5, 5], 0)]))
    (folder / "labels.txt").write_text(f"0 0.5 0.5 0.25 0.25\n# {MARKER}\n")
    return folder


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=target.is_dir())


def coco_with_links(root: Path, outside: Path) -> int:
    """A COCO folder whose json names 3 images that lead outside and one symlink that stays inside;
    returns how many lead outside."""
    write_coco(root, ONE_IMAGE)
    link(root / "train" / "link.png", outside / "secret.png")
    link(root / "train" / "passwd.png", outside / "passwd")  # no image: the json's size once kept it
    link(root / "train" / "linked", outside / "dir")
    link(root / "train" / "inside.png", Path("a.png"))  # relative, inside
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    for image_id, name in enumerate(["link.png", "passwd.png", "linked/b.png", "inside.png"], start=2):
        coco["images"].append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        coco["annotations"].append(
            {"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [4, 6, 20, 10], "area": 200}
        )
    path.write_text(json.dumps(coco))
    return 3


def yolo_with_links(root: Path, outside: Path) -> int:
    """A YOLO folder with 3 images (one a symlinked folder) that lead outside, an image whose label file
    does, and one symlink that stays inside."""
    write_yolo(root, "classes.txt", ONE_IMAGE)
    images, labels = root / "images" / "train", root / "labels" / "train"
    link(images / "link.png", outside / "secret.png")
    link(images / "passwd.png", outside / "passwd")
    link(images / "linked", outside / "dir")
    link(images / "inside.png", images / "a.png")  # absolute, inside
    PIL.Image.new("RGB", (64, 48)).save(images / "c.png")
    link(labels / "c.txt", outside / "labels.txt")
    for stem in ("link", "passwd", "inside"):
        (labels / f"{stem}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    return 3


def voc_with_links(root: Path, outside: Path) -> int:
    """A VOC devkit whose list names 2 images and an xml that lead outside, and one symlink inside."""
    write_voc(root, "devkit", ONE_IMAGE)
    link(root / "JPEGImages" / "link.png", outside / "secret.png")
    link(root / "JPEGImages" / "linked", outside / "dir")
    link(root / "JPEGImages" / "inside.png", Path("a.png"))
    PIL.Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "e.png")
    link(root / "Annotations" / "evil.xml", outside / "evil.xml")  # its class name must not leak
    for stem, filename in (("link", "link.png"), ("linked", "linked/b.png"), ("inside", "inside.png")):
        xml = voc_xml(filename, 64, 48, [("cat", [4, 6, 20, 10], 0)])
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nlink\nlinked\ninside\nevil\n")
    return 3


@pytest.mark.parametrize("layout", ["coco", "yolo", "voc"])
def test_symlinks_out_of_the_folder_are_counted_skips_that_reach_no_cache(tmp_path, caplog, layout):
    outside = write_outside(tmp_path / "outside")
    root, cache = tmp_path / "data", tmp_path / "cache"
    make = {"coco": coco_with_links, "yolo": yolo_with_links, "voc": voc_with_links}[layout]
    count = make(root, outside)
    with caplog.at_level(**WARN):
        split = load_detection_dataset(root, cache_dir=cache)["train"]
    assert f"{count} {OUTSIDE}" in caplog.text
    if layout == "yolo":
        assert "1 whose label file leads outside the dataset folder (a symlink)" in caplog.text
    paths = [r["path"] for r in split.cast_column("image", Image(decode=False))["image"]]
    assert sorted(Path(p).name for p in paths) == ["a.png", "inside.png"]
    assert MARKER not in class_names(split)
    samples = [DetectionDataset(split)[i] for i in range(len(split))]
    assert all(s is not None and s["image"].size == (64, 48) for s in samples)
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert cached and not any(MARKER.encode() in p.read_bytes() for p in cached)


def test_symlinked_folders_inside_are_read_and_symlink_loops_end(tmp_path):
    yolo = write_yolo(tmp_path / "yolo", "classes.txt", ONE_IMAGE)
    (yolo / "extra").mkdir()
    PIL.Image.new("RGB", (64, 48)).save(yolo / "extra" / "c.png")
    link(yolo / "images" / "train" / "more", Path("../../extra"))  # a folder inside, by a symlink
    link(yolo / "images" / "train" / "loop", yolo / "images")
    (yolo / "labels" / "train" / "more").mkdir()
    (yolo / "labels" / "train" / "more" / "c.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    split = load_detection_dataset(yolo, cache_dir=tmp_path / "cache")["train"]
    paths = [r["path"] for r in split.cast_column("image", Image(decode=False))["image"]]
    assert sorted(Path(p).name for p in paths) == ["a.png", "c.png"] and len(split[1]["objects"]["bbox"]) == 1
    coco = write_coco(tmp_path / "coco", ONE_IMAGE)
    link(coco / "train" / "loop", coco)  # the cache key lists the image folder: it must end
    assert len(load_detection_dataset(coco, cache_dir=tmp_path / "cache")["train"]) == 1


def test_a_stored_path_that_leads_outside_is_not_decoded(tmp_path, caplog):
    """The check runs again where the bytes are read: a stored path whose symlink now leads outside the
    folder (as a cache of paths could hold) is a counted skip of the data loader."""
    outside = write_outside(tmp_path / "outside")
    root = write_coco(tmp_path / "data", ONE_IMAGE)
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"].select([0, 0])
    link(root / "train" / "late.png", outside / "secret.png")
    images = [{"bytes": None, "path": str(root / "train" / name)} for name in ("a.png", "late.png")]
    records = split.cast_column("image", Image(decode=False)).remove_columns("image")
    records = records.add_column("image", images).cast(split.features)
    dataset = DetectionDataset(records)
    with caplog.at_level(**WARN):
        assert dataset[0]["image"].size == (64, 48) and dataset[1] is None
    assert dataset.skipped == 1 and "late.png leads outside the dataset folder" in caplog.text


# ---------------------------------------------------------------------------------------------------
# One decoding: training and evaluation, the processor, hf-detr-predict
# ---------------------------------------------------------------------------------------------------
BOX = [6, 10, 12, 30]  # x, y, w, h on the displayed picture (40 wide, 64 high)


def displayed_picture() -> PIL.Image.Image:
    """40 x 64 dark, with a bright rectangle at BOX."""
    array = np.full((64, 40, 3), 30, np.uint8)
    x, y, w, h = BOX
    array[y : y + h, x : x + w] = 230
    return PIL.Image.fromarray(array)


def save_rotated_jpeg(path: Path) -> None:
    """The displayed picture stored turned back (64 wide, 40 high) with EXIF orientation 6."""
    stored = displayed_picture().transpose(PIL.Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=95)


def save_sixteen_bit_png(path: Path) -> np.ndarray:
    """A 16-bit grayscale PNG (a ramp over the whole range); its values in 8 bits."""
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(values).save(path)
    assert PIL.Image.open(path).mode == "I;16"
    return np.round(values / 257).astype(np.uint8)


def exif_folder(root: Path, layout: str) -> Path:
    """One split of `layout` with the rotated JPEG `a.jpg`, its box and size the displayed picture's."""
    objects = [("cat", BOX, 0)]
    if layout == "coco":
        save_rotated_jpeg(root / "train" / "a.jpg")
        coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 64}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 360}],
                "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    elif layout == "yolo":
        save_rotated_jpeg(root / "images" / "a.jpg")
        (root / "labels").mkdir()
        (root / "labels" / "a.txt").write_text(yolo_lines(objects, 40, 64, ["cat"]))
        (root / "classes.txt").write_text("cat\n")
    else:
        save_rotated_jpeg(root / "JPEGImages" / "a.jpg")
        (root / "Annotations").mkdir()
        (root / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", 40, 64, objects))
    return root


@pytest.mark.parametrize("layout", ["coco", "yolo", "voc"])
def test_a_box_on_the_displayed_picture_of_an_exif_rotated_jpeg_lands_on_its_object(tmp_path, caplog, layout):
    root = exif_folder(tmp_path / "data", layout)
    with caplog.at_level(**WARN):
        split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    assert (split[0]["width"], split[0]["height"]) == (40, 64)
    sample = DetectionDataset(split)[0]
    (x, y, w, h), = [a["bbox"] for a in sample["annotation"]["annotations"]]  # fmt: skip
    pixels = np.asarray(sample["image"].convert("L"), dtype=np.float32)
    assert sample["image"].size == (40, 64) and (x, y, w, h) == pytest.approx(BOX, abs=0.01)
    assert pixels[round(y) : round(y + h), round(x) : round(x + w)].mean() > 215
    assert pixels.mean() < 100


def test_a_voc_size_of_the_stored_pixels_of_a_rotated_image_is_a_counted_skip_when_decoded(tmp_path, caplog):
    root = exif_folder(tmp_path / "data", "voc")
    PIL.Image.new("RGB", (40, 64)).save(root / "JPEGImages" / "b.jpg")
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 40, 64, [("cat", BOX, 0)]))
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", 64, 40, [("cat", BOX, 0)]))
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    dataset = DetectionDataset(split)
    with caplog.at_level(**WARN):
        assert [dataset[i] is None for i in range(len(split))] == [True, False] and dataset.skipped == 1
    assert (
        "a.jpg): the image is 40x64 but its annotation says 64x40 (the annotation gives an EXIF-rotated"
        in caplog.text
    )


def predict_inputs(monkeypatch, checkpoint: Path, paths: list[Path], output: Path) -> list[np.ndarray]:
    """The images hf-detr-predict hands to the processor, as arrays."""
    from hf_detr.predict import main

    seen, preprocess = [], HfDetrImageProcessor.preprocess

    def recording(self, images, *args, **kwargs):
        seen.extend(np.asarray(image) for image in images)
        return preprocess(self, images, *args, **kwargs)

    monkeypatch.setattr(HfDetrImageProcessor, "preprocess", recording)
    argv = ["--model", str(checkpoint), *map(str, paths), "--output-dir", str(output)]
    assert main(argv) == 0
    return seen


def test_training_evaluation_the_processor_and_predict_see_the_same_pixels(
    tmp_path, monkeypatch, known_checkpoint
):
    root = tmp_path / "coco"
    eight_bit = save_sixteen_bit_png(root / "train" / "deep.png")
    save_rotated_jpeg(root / "train" / "turned.jpg")
    coco = {"images": [{"id": 1, "file_name": "deep.png", "width": 64, "height": 48},
                       {"id": 2, "file_name": "turned.jpg", "width": 40, "height": 64}],
            "annotations": [], "categories": [{"id": 1, "name": "cat"}]}  # fmt: skip
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    split = load_detection_dataset(root, cache_dir=tmp_path / "cache")["train"]
    paths = [root / "train" / "deep.png", root / "train" / "turned.jpg"]
    training = [np.asarray(DetectionDataset(split)[i]["image"]) for i in range(2)]
    processor = HfDetrImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)
    from_files = [processor(str(p))["pixel_values"][0].permute(1, 2, 0).numpy() for p in paths]
    predicted = predict_inputs(monkeypatch, known_checkpoint, paths, tmp_path / "out")
    for index, path in enumerate(paths):
        assert np.array_equal(training[index], np.asarray(decode_image(path)))
        assert np.array_equal(training[index], from_files[index].astype(np.uint8))
        assert np.array_equal(training[index], predicted[index])
    assert np.array_equal(training[0], np.repeat(eight_bit[..., None], 3, axis=2))  # not clipped to white
    assert training[1].shape == (64, 40, 3)  # as displayed


def header_variants() -> list[bytes]:
    """JPEGs and PNGs of every mode and option PIL writes, plus EXIF- and ICC-carrying ones."""
    import io

    files, writes = [], (("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"quality": 9}))
    for mode in ("RGB", "L", "CMYK", "RGBA", "P", "I;16", "1", "LA"):
        for fmt, options in writes:
            buffer = io.BytesIO()
            try:
                PIL.Image.new(mode, (37, 23)).save(buffer, fmt, **options)
            except OSError:  # a mode the format cannot hold
                continue
            files.append(buffer.getvalue())
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (30, 20)).save(buffer, fmt, exif=exif, icc_profile=b"\0" * 200)
        files.append(buffer.getvalue())
    return files
