"""The folder caches hold annotations and file paths, never pixels: a sample reads its file when it is
decoded. In a multi-process run one process converts a folder; the others read its cache. A launch that
gives fewer processes than asked (`accelerate launch --cpu`) is warned about."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import REPO_ROOT
from test_training import TINY

from hf_detr.data import DetectionDataset, load_detection_dataset, write_shapes_coco
from hf_detr.processes import warn_fewer_processes


def folder_size(folder: Path) -> int:
    """The sum of the sizes of the files under `folder` (a hard link counted per name, as the issue)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_cache_holds_paths_not_pixels_and_a_sample_reads_its_file(tmp_path, caplog):
    root, cache = tmp_path / "shapes", tmp_path / "cache"
    write_shapes_coco(root, {"train": 40})
    files = sorted((root / "train").iterdir())
    before = [pixels(PIL.Image.open(path)) for path in files[:3]]
    with caplog.at_level(logging.INFO, logger="hf_detr"):
        split = load_detection_dataset(str(root), split="train", cache_dir=cache)["train"]
        again = load_detection_dataset(str(root), split="train", cache_dir=cache)["train"]
    assert sum("Converting" in r.getMessage() for r in caplog.records) == 1  # the second load read it

    # a few percent of the images' size, and not a byte of any image in it
    ratio = folder_size(cache) / folder_size(root / "train")
    print(f"cache {folder_size(cache)} bytes for {folder_size(root / 'train')} bytes of images: {ratio:.1%}")
    assert ratio < 0.10
    stored = b"".join(path.read_bytes() for path in cache.rglob("*.arrow"))
    assert not any(path.read_bytes()[-64:] in stored for path in files)

    # records are Image() columns with the absolute path of their file, decoded to the same pixels
    record = again.with_format("arrow")[:1].column("image").to_pylist()[0]
    assert record["bytes"] is None and Path(record["path"]) == files[0].resolve()
    assert split.features == again.features and split.features["image"].decode
    for index, expected in enumerate(before):
        assert np.array_equal(pixels(again[index]["image"]), expected)
        assert np.array_equal(pixels(DetectionDataset(again)[index]["image"]), expected)

    # the file is read when a sample is decoded: a replaced image decodes as its new content...
    files[0].write_bytes(files[1].read_bytes())
    assert np.array_equal(pixels(again[0]["image"]), before[1])
    assert np.array_equal(pixels(DetectionDataset(again)[0]["image"]), before[1])
    # ...and a deleted one cannot be decoded (the data loaders skip it)
    files[2].unlink()
    with pytest.raises(FileNotFoundError):
        again[2]["image"]
    dataset = DetectionDataset(again)
    assert dataset[2] is None and dataset.skipped == 1


def test_a_launch_with_fewer_processes_than_asked_is_warned_about(monkeypatch, caplog):
    launched = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # `accelerate launch --cpu` sets these
    with caplog.at_level(logging.WARNING, logger="hf_detr"):
        assert not warn_fewer_processes(2, {**launched, "WORLD_SIZE": "2"})
        assert not warn_fewer_processes(1, {**launched, "WORLD_SIZE": "1"})  # one process asked for
        assert not warn_fewer_processes(1, {})  # no launcher
        assert not caplog.records
        for name, value in launched.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        assert warn_fewer_processes(1)  # the process's own environment
    (warning,) = caplog.records
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N" in warning.getMessage()


@pytest.mark.multiprocess
def test_two_cpu_processes_convert_each_split_once(tmp_path):
    root, out, cache = tmp_path / "shapes", tmp_path / "out", tmp_path / "cache"
    write_shapes_coco(root, {"train": 4, "val": 2})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_DETR_CACHE": str(cache)}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO_ROOT / "scripts" / "train.py"), *flags, "--dataset", str(root),
               "--output-dir", str(out), "--epochs", "1", "--max-steps", "1"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    conversions = [line for line in done.stderr.splitlines() if "Converting" in line]
    assert len(conversions) == 2, conversions  # train and val, by one process
    assert sorted(line.split("Converting ")[1].split(" into")[0] for line in conversions) == [
        f"{root} train",
        f"{root} val",
    ]
    assert "a launcher asked for more" not in done.stderr
    assert len([p for p in (cache / "coco").iterdir()]) == 2  # no staging folder left
