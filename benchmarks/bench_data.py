"""Data loading at COCO scale: hf_detr's `load_detection_dataset` against pycocotools and torchvision.

A generator writes a COCO-scale folder (issue 37): N images as hard links of a few small JPEGs under
COCO-style file names, ~7.4 boxes per image (COCO train2017: 118,287 images, 860,001 boxes), COCO's
80 category ids with their gaps. Each loader is measured in a fresh subprocess: first load (hf_detr:
json -> arrow cache, empty cache), second load (hf_detr: cache hit; the others build their index again
at every start), peak memory (peak RSS minus the RSS after imports), the cache's size on disk, and the
iteration rate over the decoded records (annotations only: no pixels). Also times the built-in set.

    python benchmarks/bench_data.py [--images 10000 50000 118287] [--boxes-per-image 7.4] [--builtin]
    python benchmarks/bench_data.py --images 1700000 --boxes-per-image 14.7 --only hf_detr   # Objects365-size
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]  # 80


LINKS_PER_FILE = 60_000


def write_coco_folder(root: Path, num_images: int, boxes_per_image: float, seed: int = 0) -> Path:
    """A COCO folder (annotations/instances_train.json + train/) of `num_images` hard-linked JPEGs."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    sizes = [(640, 480), (480, 640), (640, 427), (500, 375)]
    kinds = rng.integers(0, len(sizes), num_images)
    images = []
    for index in range(num_images):
        image_id = index * 3 + 9  # sparse ids, as COCO's
        name = f"{image_id:012d}.jpg"
        if index % LINKS_PER_FILE == 0:  # a new file of each size: a file takes at most 65,000 links
            sources = [root / f"source_{k}_{index}.jpg" for k in range(len(sizes))]
            for k, ((w, h), source) in enumerate(zip(sizes, sources)):
                PIL.Image.new("RGB", (w, h), (k * 40, 90, 160)).save(source, quality=50)
        os.link(sources[kinds[index]], root / "train" / name)
        w, h = sizes[kinds[index]]
        images.append({"license": 1, "file_name": name, "coco_url": f"http://images.cocodataset.org/train2017/{name}",
                       "height": h, "width": w, "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id})  # fmt: skip
    counts = rng.poisson(boxes_per_image, num_images)
    total = int(counts.sum())
    owner = np.repeat(np.arange(num_images), counts)
    widths = np.array([sizes[k][0] for k in kinds], float)[owner]
    heights = np.array([sizes[k][1] for k in kinds], float)[owner]
    x, y = rng.uniform(0, 0.9, total) * widths, rng.uniform(0, 0.9, total) * heights
    bw = np.maximum(rng.uniform(0, 1, total) * (widths - x), 1.0)
    bh = np.maximum(rng.uniform(0, 1, total) * (heights - y), 1.0)
    categories = rng.choice(COCO_CATEGORY_IDS, total)
    crowd = (rng.uniform(0, 1, total) < 0.01).astype(int)
    path = root / "annotations" / "instances_train.json"
    with open(path, "w") as handle:  # written piece by piece: the 25M-box json does not fit a Python list
        handle.write('{"info": {"description": "synthetic COCO-scale"}, "licenses": [], "images": ')
        handle.write(json.dumps(images))
        del images
        handle.write(', "annotations": [')
        for start in range(0, total, 200_000):
            stop = min(start + 200_000, total)
            chunk = [
                {"segmentation": [[round(x[i], 2), round(y[i], 2), round(x[i] + bw[i], 2), round(y[i], 2),
                                   round(x[i] + bw[i], 2), round(y[i] + bh[i], 2)]],
                 "area": round(bw[i] * bh[i] / 2, 3), "iscrowd": int(crowd[i]), "image_id": int(owner[i] * 3 + 9),
                 "bbox": [round(x[i], 2), round(y[i], 2), round(bw[i], 2), round(bh[i], 2)],
                 "category_id": int(categories[i]), "id": i + 1}
                for i in range(start, stop)
            ]  # fmt: skip
            handle.write(("," if start else "") + json.dumps(chunk)[1:-1])
        handle.write('], "categories": ')
        handle.write(
            json.dumps([{"supercategory": "thing", "id": i, "name": f"class_{i}"} for i in COCO_CATEGORY_IDS])
        )
        handle.write("}")
    return path


# One loader in a fresh interpreter: imports first (their RSS is the baseline), then the load; prints JSON.
CHILD = r"""
import contextlib, io, json, os, sys, time
loader, folder, cache, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if loader == "hf_detr":
    from hf_detr.data import load_detection_dataset
    def load():
        return load_detection_dataset(folder, split="train", cache_dir=cache)["train"]
    def iterate(split):
        n = 0
        for record in split.select_columns(["image_id", "objects"]):
            n += len(record["objects"]["bbox"])
        return n
elif loader == "pycocotools":
    from pycocotools.coco import COCO
    def load():
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(os.path.join(folder, "annotations", "instances_train.json"))
    def iterate(coco):
        return sum(len(coco.loadAnns(coco.getAnnIds(imgIds=i))) for i in coco.getImgIds())
else:
    from torchvision.datasets import CocoDetection
    def load():
        with contextlib.redirect_stdout(io.StringIO()):
            return CocoDetection(os.path.join(folder, "train"), os.path.join(folder, "annotations", "instances_train.json"))
    def iterate(dataset):  # its __getitem__ decodes the image: only the target part is timed
        coco = dataset.coco
        return sum(len(coco.loadAnns(coco.getAnnIds(i))) for i in dataset.ids)

import numpy, PIL.Image  # noqa: F401  (imported by all three)
base = rss()
start = time.perf_counter()
with contextlib.redirect_stderr(io.StringIO()):
    data = load()
seconds = time.perf_counter() - start
# VmHWM, this process's own peak: ru_maxrss would keep the parent's RSS at fork as a floor
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
result = {"seconds": seconds, "peak_mb": (peak - base) / 1e6}
if repeat:
    start = time.perf_counter()
    boxes = iterate(data)
    result["iterate_s"] = time.perf_counter() - start
    result["boxes"] = boxes
print(json.dumps(result))
"""


def measure(loader: str, folder: Path, cache: Path, iterate: bool) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, loader, str(folder), str(cache), str(int(iterate))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"{loader} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_size(
    tmp: Path, num_images: int, boxes_per_image: float, loaders: list[str], iterate: bool, samples: int = 0
) -> None:
    folder = tmp / f"coco-{num_images}"
    start = time.perf_counter()
    json_path = write_coco_folder(folder, num_images, boxes_per_image)
    written = time.perf_counter() - start
    print(
        f"\n{num_images:,} images, json {json_path.stat().st_size / 1e6:.0f} MB (written in {written:.0f} s)"
    )
    print(f"{'loader':>12} | {'first s':>7} | {'peak MB':>7} | {'second s':>8} | {'peak MB':>7} | "
          f"{'cache MB':>8} | {'iter s':>6} | boxes/s")  # fmt: skip
    for loader in loaders:
        cache = tmp / f"cache-{loader}-{num_images}"
        first = measure(loader, folder, cache, iterate=False)
        second = measure(loader, folder, cache, iterate=iterate)
        cache_mb = folder_size(cache) / 1e6 if cache.exists() else 0.0
        boxes = second.get("boxes", 0)
        rate = f"{boxes / second['iterate_s']:,.0f}" if iterate else "-"
        print(
            f"{loader:>12} | {first['seconds']:7.1f} | {first['peak_mb']:7.0f} | {second['seconds']:8.2f} | "
            f"{second['peak_mb']:7.0f} | {cache_mb:8.0f} | {second.get('iterate_s', 0):6.1f} | {rate}",
            flush=True,
        )
    if samples:
        ours, peer = sample_rates(folder, tmp / f"cache-hf_detr-{num_images}", samples)
        print(f"{samples:,} training samples (decode, paper augmentation, normalize, pad; batch 2, no workers): "
              f"hf_detr {ours:.1f} img/s, torchvision + transforms.v2 {peer:.1f} img/s ({ours / peer:.2f}x)")  # fmt: skip
    import shutil

    shutil.rmtree(folder)


def sample_rates(folder: Path, cache: Path, samples: int, batch_size: int = 2) -> tuple[float, float]:
    """Training samples per second over the first `samples` images, one process, no workers: decode,
    the paper's augmentation, normalize and pad into batches. hf_detr: `DetectionDataset` +
    `DetectionCollator`; peer: torchvision's `CocoDetection` wrapped for transforms.v2, the same v2
    augmentation, `ToImage`/`ToDtype`/`Normalize` and a padding collate."""
    import torch
    from torchvision import tv_tensors
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    from torchvision.transforms import v2

    from hf_detr.data import DetectionCollator, DetectionDataset, load_detection_dataset
    from hf_detr.data.transforms import detr_train_transforms

    def rate(batches) -> float:
        start = time.perf_counter()
        for _ in batches:
            pass
        return samples / (time.perf_counter() - start)

    with contextlib.redirect_stderr(io.StringIO()):
        split = load_detection_dataset(str(folder), split="train", cache_dir=str(cache))["train"]
    ours = DetectionDataset(split, detr_train_transforms(), seed=0, on_error="replace")
    collate = DetectionCollator(do_resize=False)
    hf_rate = rate(
        collate([ours[i] for i in range(start, min(start + batch_size, samples))])
        for start in range(0, samples, batch_size)
    )

    with contextlib.redirect_stdout(io.StringIO()):
        coco = CocoDetection(str(folder / "train"), str(folder / "annotations" / "instances_train.json"))
    wrapped = wrap_dataset_for_transforms_v2(coco, target_keys=("boxes", "labels", "image_id"))
    augment = detr_train_transforms()
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip

    def peer_sample(index: int) -> tuple[torch.Tensor, dict]:
        image, target = wrapped[index]
        if "boxes" not in target:  # an image without objects: the wrapper leaves the keys out
            target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                                        canvas_size=(image.height, image.width)),
                      "labels": torch.zeros(0, dtype=torch.long)}  # fmt: skip
        out = augment({"image": image, "boxes": target["boxes"], "labels": target["labels"]})
        return to_tensor(out["image"]), {
            "boxes": out["boxes"].as_subclass(torch.Tensor),
            "labels": out["labels"],
        }

    def peer_collate(batch: list[tuple[torch.Tensor, dict]]) -> torch.Tensor:
        height = max(image.shape[1] for image, _ in batch)
        width = max(image.shape[2] for image, _ in batch)
        padded = torch.zeros(len(batch), 3, height, width)
        for k, (image, _) in enumerate(batch):
            padded[k, :, : image.shape[1], : image.shape[2]] = image
        return padded

    peer = rate(
        peer_collate([peer_sample(i) for i in range(start, min(start + batch_size, samples))])
        for start in range(0, samples, batch_size)
    )
    return hf_rate, peer


def bench_builtin(tmp: Path) -> None:
    from hf_detr.data import load_detection_dataset
    from hf_detr.data.builtin import SPLIT_SIZES, builtin_dataset_folder

    def timed(fn) -> float:
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            fn()
        return time.perf_counter() - start

    os.environ["HF_DETR_CACHE"] = str(tmp / "builtin-cache")
    build = timed(lambda: load_detection_dataset(builtin_dataset_folder(), cache_dir=tmp / "builtin-arrow"))
    reload = timed(lambda: load_detection_dataset(builtin_dataset_folder(), cache_dir=tmp / "builtin-arrow"))
    total = sum(SPLIT_SIZES.values())
    print(
        f"built-in set ({total:,} images): first use {build:.1f} s (write PNGs + convert), later {reload:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 50_000, 118_287])
    parser.add_argument("--boxes-per-image", type=float, default=7.38)  # 872,967 / 118,287
    parser.add_argument("--only", nargs="+", default=["hf_detr", "pycocotools", "torchvision"])
    parser.add_argument("--no-iterate", action="store_true", help="skip the iteration-rate pass")
    parser.add_argument("--builtin", action="store_true", help="also time the built-in synthetic set")
    parser.add_argument("--samples", type=int, default=0, help="also time N training samples (0: no)")
    parser.add_argument("--tmp", default=None, help="where to write the folders (default: the system's)")
    args = parser.parse_args()
    print(f"peak memory = peak RSS minus RSS after imports, fresh subprocess per load; cpus {os.cpu_count()}")
    if args.tmp:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for num_images in args.images:
            bench_size(
                Path(tmp), num_images, args.boxes_per_image, args.only, not args.no_iterate, args.samples
            )
        if args.builtin:
            bench_builtin(Path(tmp))


if __name__ == "__main__":
    main()
