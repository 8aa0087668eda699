"""`hf-detr-predict` / `scripts/predict.py`: detections as JSON lines and pictures, optionally with
DETR's attention maps.

    python scripts/predict.py --model DIR_OR_REPO photos/ "more/*.jpg" one.png --output-dir out \\
        [--threshold 0.7] [--top-k 10] [--device cuda] [--batch-size 4] [--attention [--attention-pixel X,Y]]

Writes `out/detections.jsonl` (one line per detection: image, label, label_id, score, box) and, per
image, `out/<name>.png` with the boxes drawn; with `--attention`, per detection the last decoder
layer's cross-attention (averaged over heads) as a heat map beside the detection
(`<name>_det<k>_attention.png`), and the encoder self-attention of one pixel (`<name>_encoder_attention.png`;
the pixel is `--attention-pixel`, default the centre of the best detection). Images are loaded as the
pipeline loads them (EXIF rotation applied). Unreadable files are reported and skipped; the exit code
is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-detr-predict", description="Detect objects and draw them.")
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a Hub repo id")
    parser.add_argument("images", nargs="+", help="image files, directories or glob patterns")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=0.7, help="minimum score (default 0.7)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the best k (query, class) pairs per image"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attention", action="store_true", help="also save attention maps")
    parser.add_argument(
        "--attention-pixel", default=None, help="X,Y of the pixel whose encoder attention to show"
    )
    return parser


def expand_inputs(patterns: list[str]) -> tuple[list[Path], list[str]]:
    """Files from paths, directories (their images, sorted) and globs; patterns matching nothing are errors."""
    files, missing = [], []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if matches:
                files.extend(matches)
            else:
                missing.append(pattern)
    return files, missing


def detection_records(
    image: str, detection: dict[str, torch.Tensor], id2label: dict[int, str]
) -> list[dict[str, Any]]:
    return [
        {
            "image": image,
            "label": id2label.get(int(label), str(int(label))),
            "label_id": int(label),
            "score": float(score),
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) for v in box))),
        }
        for score, label, box in zip(detection["scores"], detection["labels"], detection["boxes"].tolist())
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.image_utils import load_image

    from .image_processing_detr import HfDetrImageProcessor
    from .modeling_detr import HfDetrForObjectDetection
    from .visualization import (
        decoder_attention_map,
        draw_detections,
        encoder_attention_map,
        feature_cell,
        heat_overlay,
        mark_pixel,
        side_by_side,
    )

    files, missing = expand_inputs(args.images)
    failures = [f"{pattern}: no such file, directory or matching image" for pattern in missing]
    pixel = None
    if args.attention_pixel:
        try:
            pixel = tuple(float(v) for v in args.attention_pixel.split(","))
            assert len(pixel) == 2
        except (ValueError, AssertionError):
            build_parser().error(f"--attention-pixel must be X,Y, got {args.attention_pixel!r}")
    device = torch.device(args.device)
    model = HfDetrForObjectDetection.from_pretrained(args.model).to(device).eval()
    try:
        processor = HfDetrImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = HfDetrImageProcessor()
    names = {int(k): v for k, v in model.config.id2label.items()}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    with (args.output_dir / "detections.jsonl").open("w") as out:
        for start in tqdm(
            range(0, len(files), args.batch_size), desc="Predicting", disable=len(files) <= args.batch_size
        ):
            batch = []
            for path in files[start : start + args.batch_size]:
                try:
                    batch.append((path, load_image(str(path))))
                except Exception as error:  # PIL raises many kinds for broken files
                    failures.append(f"{path}: cannot read the image ({error})")
            if not batch:
                continue
            images = [image for _, image in batch]
            inputs = processor(images, device=device)
            with torch.no_grad():
                outputs = model(**inputs, output_attentions=args.attention)
            sizes = [(image.height, image.width) for image in images]
            detections = processor.post_process_object_detection(
                outputs, args.threshold, sizes, top_k=args.top_k
            )
            queries = _query_of_detections(outputs, detections, args.threshold, args.top_k)
            for index, ((path, image), detection) in enumerate(zip(batch, detections)):
                stem = _unique_stem(path, used_names)
                for record in detection_records(str(path), detection, names):
                    out.write(json.dumps(record) + "\n")
                boxes = detection["boxes"].cpu()
                labels, scores = detection["labels"].tolist(), detection["scores"].tolist()
                draw_detections(image, boxes, labels, scores, names).save(args.output_dir / f"{stem}.png")
                if not args.attention:
                    continue
                for k, (query, box, label, score) in enumerate(zip(queries[index], boxes, labels, scores)):
                    heat = heat_overlay(image, decoder_attention_map(outputs, index, query).cpu())
                    framed = draw_detections(heat, box[None], [label], [score], names)
                    side_by_side(draw_detections(image, box[None], [label], [score], names), framed).save(
                        args.output_dir / f"{stem}_det{k}_attention.png"
                    )
                x, y = pixel or _default_pixel(boxes, image)
                mask = outputs.feature_mask[index]
                row, column = feature_cell(x, y, image.size, (int(mask[:, 0].sum()), int(mask[0].sum())))
                encoder = heat_overlay(image, encoder_attention_map(outputs, index, row, column).cpu())
                mark_pixel(encoder, x, y).save(args.output_dir / f"{stem}_encoder_attention.png")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    print(
        f"{len(files) - sum(1 for f in failures if not f.endswith('matching image'))} image(s) written to {args.output_dir}"
    )
    return 1 if failures else 0


def _query_of_detections(outputs, detections, threshold: float, top_k: int | None) -> list[list[int]]:
    """For each kept detection, the query that produced it (post-processing does not return it)."""
    probabilities = outputs.logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    result = []
    for image_index, detection in enumerate(detections):
        if top_k is None:
            scores, _ = probabilities[image_index].max(-1)
            kept = torch.nonzero(scores > threshold).flatten()
        else:
            flat = probabilities[image_index].flatten()
            top_scores, top_index = flat.topk(min(top_k, flat.numel()))
            kept = (top_index // probabilities.shape[-1])[top_scores > threshold]
        result.append(kept.tolist())
        assert len(kept) == len(detection["scores"])
    return result


def _default_pixel(boxes: torch.Tensor, image) -> tuple[float, float]:
    if len(boxes):
        x0, y0, x1, y1 = boxes[0].tolist()
        return (x0 + x1) / 2, (y0 + y1) / 2
    return image.width / 2, image.height / 2


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, counter = path.stem, 1
    while stem in used:
        counter += 1
        stem = f"{path.stem}_{counter}"
    used.add(stem)
    return stem


if __name__ == "__main__":
    sys.exit(main())
