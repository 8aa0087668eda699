"""`hf-detr-predict` / `scripts/predict.py`: detections as JSON lines and pictures, optionally with
DETR's attention maps; or panoptic segments (paper section 4.4, figure 9).

    python scripts/predict.py --model DIR_OR_REPO photos/ "more/*.jpg" one.png --output-dir out \\
        [--task detection|panoptic] [--threshold 0.7] [--top-k 10] [--device cuda] [--batch-size 4] \\
        [--attention [--attention-pixel X,Y]] [--fuse-labels sky,grass,184]

`--task` defaults to the checkpoint's kind: panoptic for a segmentation model (config architecture
`HfDetrForSegmentation`), detection otherwise; a segmentation model can also run `--task detection`.

Detection writes `out/detections.jsonl` (one line per detection: image, label, label_id, score, box) and,
per image, `out/<name>.png` with the boxes drawn; with `--attention`, per detection the last decoder
layer's cross-attention (averaged over heads) as a heat map beside the detection
(`<name>_det<k>_attention.png`), and the encoder self-attention of one pixel (`<name>_encoder_attention.png`;
the pixel is `--attention-pixel`, default the centre of the best detection).

Panoptic writes `out/segments.jsonl` (one line per segment: image, segment_id, label, label_id, score,
fused, area in pixels, bbox as xmin/ymin/xmax/ymax pixel edges) and `out/<name>_panoptic.png`: each
segment in its colour over the image, outlined, with its class name. Queries scoring above `--threshold`
become segments as in `post_process_panoptic_segmentation` (`--panoptic-rule`: the official DETR's by
default, or transformers'); `--fuse-labels` names the (stuff) classes, by name or id, whose queries
merge into one segment per image.

Images are decoded as training and evaluation decode them (`decode_image`: as displayed, the EXIF
rotation applied as the pipeline does; 16-bit scaled to 8 bits). Unreadable files are reported and
skipped; the exit code is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from .commands import add_traceback_argument, positive_int, probability, run_command
from .video import is_video_source

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TASKS = ("detection", "panoptic")
SEGMENTATION_ARCHITECTURE = "HfDetrForSegmentation"
Batch = list[tuple[Path, Any]]  # (path, PIL image)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-detr-predict", description="Detect objects or segment images (panoptic) and draw them."
    )
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a Hub repo id")
    parser.add_argument(
        "images", nargs="+", metavar="SOURCE",
        help="image files, directories or glob patterns; video files, webcam indexes (0) or stream URLs",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", type=Path, required=True,
        help="directory for the drawn images and detections.jsonl (segments.jsonl when panoptic)",
    )  # fmt: skip
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="detection or panoptic (default: panoptic for an HfDetrForSegmentation checkpoint, else detection)",
    )
    parser.add_argument(
        "--threshold", type=probability, default=0.7,
        help="minimum score, 0-1, of a kept detection or panoptic segment (default: 0.7)",
    )  # fmt: skip
    parser.add_argument(
        "--top-k", type=positive_int, default=None,
        help="detection: keep the best k (query, class) pairs per image above --threshold (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="torch device to run on: cpu, cuda, cuda:1, ... (default: cpu)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, help="images per forward pass, 1 or more (default: 4)"
    )
    parser.add_argument("--attention", action="store_true", help="detection: also save attention maps")
    parser.add_argument(
        "--attention-pixel", default=None,
        help="X,Y in image pixels whose encoder attention to show (default: the best detection's centre)",
    )  # fmt: skip
    parser.add_argument(
        "--fuse-labels",
        default=None,
        help="panoptic: comma-separated class names or ids (stuff) whose queries merge into one segment",
    )
    parser.add_argument(
        "--panoptic-rule", choices=("detr", "transformers"), default="detr",
        help="panoptic: the official DETR's post-processing (default) or transformers' (score-weighted masks)",
    )  # fmt: skip
    parser.add_argument(
        "--every", type=positive_int, default=1, help="videos: detect every N-th frame, 1 or more (default: 1)"
    )
    parser.add_argument(
        "--max-frames", type=positive_int, default=None, help="videos: stop after N detected frames (default: all)"
    )
    parser.add_argument(
        "--track", action="store_true", help="videos: follow objects across frames (ByteTrack ids, track_id)"
    )
    add_traceback_argument(parser)
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


def segment_records(
    image: str, segmentation: torch.Tensor, segments_info: list[dict[str, Any]], id2label: dict[int, str]
) -> list[dict[str, Any]]:
    """One record per segment id of a panoptic result (`segmentation` [H, W] ids, `segments_info` as
    `post_process_panoptic_segmentation` returns them, where a fused segment repeats its id once per
    query): its label, best query score, area in pixels and bbox (pixel edges, xmax/ymax exclusive)."""
    ids = segmentation.cpu()
    records: dict[int, dict[str, Any]] = {}
    for info in segments_info:
        segment_id, label = int(info["id"]), int(info["label_id"])
        if segment_id in records:
            records[segment_id]["score"] = max(records[segment_id]["score"], float(info["score"]))
            continue
        rows, columns = torch.nonzero(ids == segment_id, as_tuple=True)
        bbox = None
        if len(rows):
            bbox = {"xmin": int(columns.min()), "ymin": int(rows.min()),
                    "xmax": int(columns.max()) + 1, "ymax": int(rows.max()) + 1}  # fmt: skip
        records[segment_id] = {
            "image": image,
            "segment_id": segment_id,
            "label": id2label.get(label, str(label)),
            "label_id": label,
            "score": float(info["score"]),
            "fused": bool(info.get("was_fused", False)),
            "area": len(rows),
            "bbox": bbox,
        }
    return [records[segment_id] for segment_id in sorted(records)]


def is_segmentation_config(config: Any) -> bool:
    return SEGMENTATION_ARCHITECTURE in (getattr(config, "architectures", None) or [])


def resolve_task(requested: str | None, config: Any) -> str:
    """`--task`, or the checkpoint's kind when not given; panoptic needs a segmentation checkpoint."""
    segmentation = is_segmentation_config(config)
    if requested is None:
        return "panoptic" if segmentation else "detection"
    if requested == "panoptic" and not segmentation:
        raise ValueError(
            f"--task panoptic needs a segmentation checkpoint (config architecture {SEGMENTATION_ARCHITECTURE}"
            f"), got architectures {getattr(config, 'architectures', None)}; train or convert one first."
        )
    return requested


def fuse_label_ids(spec: str | None, id2label: dict[int, str]) -> set[int]:
    """`--fuse-labels` ("sky,grass,184": class names from id2label, or ids) -> label ids."""
    if not spec:
        return set()
    by_name = {name: label for label, name in id2label.items()}
    ids = set()
    for item in (part.strip() for part in spec.split(",")):
        if item in by_name:
            ids.add(by_name[item])
        elif item.lstrip("-").isdigit() and int(item) in id2label:
            ids.add(int(item))
        elif item:
            known = ", ".join(sorted(by_name)[:20]) + (", ..." if len(by_name) > 20 else "")
            raise ValueError(f"--fuse-labels: {item!r} is neither a class name nor a label id ({known}).")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .configuration_detr import HfDetrConfig
    from .image_processing_detr import HfDetrImageProcessor
    from .modeling_detr import HfDetrForObjectDetection
    from .modeling_detr_segmentation import HfDetrForSegmentation
    from .predict_video import INTERRUPTED, predict_videos

    pixel = _attention_pixel(args.attention_pixel, parser)
    config = HfDetrConfig.from_pretrained(args.model)
    names = {int(k): v for k, v in config.id2label.items()}
    try:
        task = resolve_task(args.task, config)
        fuse = fuse_label_ids(args.fuse_labels, names)
    except ValueError as error:
        parser.error(str(error))
    if task == "panoptic" and (args.attention or args.top_k is not None):
        parser.error("--attention and --top-k apply to --task detection only.")
    if task == "detection" and args.fuse_labels:
        parser.error("--fuse-labels applies to --task panoptic only.")
    videos = [source for source in args.images if is_video_source(source) and not Path(source).is_dir()]
    if videos and (task == "panoptic" or args.attention):
        parser.error("videos, webcams and streams run --task detection, without --attention.")
    files, missing = expand_inputs([source for source in args.images if source not in videos])
    failures = [f"{pattern}: no such file, directory or matching image" for pattern in missing]
    device = torch.device(args.device)
    model_class = HfDetrForSegmentation if is_segmentation_config(config) else HfDetrForObjectDetection
    model = model_class.from_pretrained(args.model, config=config).to(device).eval()
    try:
        processor = HfDetrImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = HfDetrImageProcessor()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    records_name = "segments.jsonl" if task == "panoptic" else "detections.jsonl"
    with (args.output_dir / records_name).open("w") as out:
        writer = _Writer(processor, args, names, out, fuse, pixel)
        for batch in _image_batches(files, args.batch_size, failures):
            if args.attention:
                _check_attention_pixel(pixel, batch)
            images = [image for _, image in batch]
            inputs = processor(images, device=device)
            with torch.no_grad():
                outputs = model(
                    **inputs, output_attentions=args.attention, output_feature_mask=args.attention
                )
            stems = [_unique_stem(path, used_names) for path, _ in batch]
            if task == "panoptic":
                writer.panoptic(batch, stems, outputs, inputs.get("pixel_mask"))
            else:
                writer.detections(batch, stems, outputs)
        # the pictures written: those read (a pattern matching nothing names no file)
        pictures = len(files) - sum(1 for f in failures if not f.endswith("matching image"))
        frames, interrupted = predict_videos(videos, model, processor, args, names, out, failures) if videos else (0, False)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    print(f"{pictures} image(s){f' and {frames} video frame(s)' if videos else ''} written to {args.output_dir}")
    if interrupted:
        print("Interrupted (Ctrl-C): what was written so far is kept.", file=sys.stderr)
        return INTERRUPTED
    return 1 if failures else 0


def _attention_pixel(value: str | None, parser: argparse.ArgumentParser) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        pixel = tuple(float(v) for v in value.split(","))
    except ValueError:
        pixel = ()
    if len(pixel) != 2:
        parser.error(f"--attention-pixel must be X,Y, got {value!r}")
    return pixel


def _check_attention_pixel(pixel: tuple[float, float] | None, batch: Batch) -> None:
    """`--attention-pixel` must lie in every image (else a ValueError naming the image and its size)."""
    if pixel is None:
        return
    x, y = pixel
    for path, image in batch:
        if not (0 <= x < image.width and 0 <= y < image.height):
            raise ValueError(
                f"--attention-pixel {x:g},{y:g} lies outside {path} ({image.width}x{image.height} pixels): "
                f"give X from 0 to {image.width - 1} and Y from 0 to {image.height - 1}, or leave it out "
                "(the best detection's centre)."
            )


def _image_batches(files: list[Path], batch_size: int, failures: list[str]) -> Iterator[Batch]:
    """The readable images in batches of (path, PIL image), decoded as training and evaluation decode
    them (`decode_image`); unreadable ones are added to `failures`."""
    from .image_processing_detr import decode_image

    for start in tqdm(range(0, len(files), batch_size), desc="Predicting", disable=len(files) <= batch_size):
        batch = []
        for path in files[start : start + batch_size]:
            try:
                batch.append((path, decode_image(path)))
            except Exception as error:  # PIL raises many kinds for broken files
                failures.append(f"{path}: cannot read the image ({error})")
        if batch:
            yield batch


@dataclass
class _Writer:
    """Writes each batch's results: records to `out`, pictures to `args.output_dir`."""

    processor: Any
    args: argparse.Namespace
    names: dict[int, str]
    out: TextIO
    fuse: set[int]
    pixel: tuple[float, float] | None

    def detections(self, batch: Batch, stems: list[str], outputs: Any) -> None:
        """Detection records, the drawn boxes and (with `--attention`) the attention maps of one batch."""
        from .visualization import (
            decoder_attention_map,
            draw_detections,
            encoder_attention_map,
            feature_cell,
            heat_overlay,
            mark_pixel,
            side_by_side,
        )

        sizes = [(image.height, image.width) for _, image in batch]
        detections = self.processor.post_process_object_detection(
            outputs, self.args.threshold, sizes, top_k=self.args.top_k
        )
        queries = query_of_detections(outputs, detections, self.args.threshold, self.args.top_k)
        for index, ((path, image), detection, stem) in enumerate(zip(batch, detections, stems)):
            for record in detection_records(str(path), detection, self.names):
                self.out.write(json.dumps(record) + "\n")
            boxes = detection["boxes"].cpu()
            labels, scores = detection["labels"].tolist(), detection["scores"].tolist()
            draw_detections(image, boxes, labels, scores, self.names).save(
                self.args.output_dir / f"{stem}.png"
            )
            if not self.args.attention:
                continue
            for k, (query, box, label, score) in enumerate(zip(queries[index], boxes, labels, scores)):
                heat = heat_overlay(image, decoder_attention_map(outputs, index, query).cpu())
                framed = draw_detections(heat, box[None], [label], [score], self.names)
                side_by_side(draw_detections(image, box[None], [label], [score], self.names), framed).save(
                    self.args.output_dir / f"{stem}_det{k}_attention.png"
                )
            x, y = self.pixel or _default_pixel(boxes, image)
            mask = outputs.feature_mask[index]
            row, column = feature_cell(x, y, image.size, (int(mask[:, 0].sum()), int(mask[0].sum())))
            encoder = heat_overlay(image, encoder_attention_map(outputs, index, row, column).cpu())
            mark_pixel(encoder, x, y).save(self.args.output_dir / f"{stem}_encoder_attention.png")

    def panoptic(self, batch: Batch, stems: list[str], outputs: Any, pixel_mask: torch.Tensor | None) -> None:
        """Segment records and the drawn panoptic map (`<stem>_panoptic.png`) of each image of one batch."""
        from .image_processing_detr_postprocessing import unpadded_segmentation_outputs
        from .visualization import draw_panoptic

        for index, ((path, image), stem) in enumerate(zip(batch, stems)):
            (result,) = self.processor.post_process_panoptic_segmentation(
                unpadded_segmentation_outputs(outputs, pixel_mask, index),
                threshold=self.args.threshold,
                label_ids_to_fuse=self.fuse,
                target_sizes=[(image.height, image.width)],
                rule=self.args.panoptic_rule,
            )
            segmentation = result["segmentation"].cpu()  # [H, W]; 0 (or -1 everywhere): no segment
            for record in segment_records(str(path), segmentation, result["segments_info"], self.names):
                self.out.write(json.dumps(record) + "\n")
            draw_panoptic(image, segmentation, result["segments_info"], self.names).save(
                self.args.output_dir / f"{stem}_panoptic.png"
            )


def query_of_detections(outputs, detections, threshold: float, top_k: int | None) -> list[list[int]]:
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
    sys.exit(run_command(main))
