"""`hf-detr-evaluate` / `scripts/evaluate_coco.py`: COCO AP of a model on a detection dataset.

    python scripts/evaluate_coco.py --model DIR_OR_REPO --dataset NAME_OR_PATH --split val \\
        [--batch-size 8] [--output results.json]
    accelerate launch scripts/evaluate_coco.py ...   # every process evaluates its shard
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-detr-evaluate", description="COCO box AP of an hf_detr model.")
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a Hub repo id")
    parser.add_argument(
        "--dataset", default=None, help="COCO folder, parquet/arrow path or Hub name (default: built-in)"
    )
    parser.add_argument("--split", default="val", help="the split to evaluate (default: val)")
    parser.add_argument(
        "--bbox-format", choices=("xywh", "xyxy"), default="xywh", help="box format of a Hub dataset"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch and process")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the best k (query, class) pairs per image"
    )
    parser.add_argument("--backend", choices=("faster_coco_eval", "pycocotools"), default="faster_coco_eval")
    parser.add_argument("--output", type=Path, default=None, help="write the stats as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from ..data import DetectionCollator, DetectionDataset, load_detection_dataset
    from ..image_processing_detr import HfDetrImageProcessor
    from ..modeling_detr import HfDetrForObjectDetection
    from .coco_evaluator import CocoEvaluator, label_to_category_mapping, split_to_coco
    from .loop import evaluate_model

    accelerator = Accelerator()
    model = HfDetrForObjectDetection.from_pretrained(args.model)
    try:
        processor = HfDetrImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = HfDetrImageProcessor()
    split = load_detection_dataset(args.dataset, split=args.split, bbox_format=args.bbox_format)[args.split]
    ground_truth = split_to_coco(split)
    mapping = label_to_category_mapping(
        model.config.id2label, ground_truth["categories"], getattr(model.config, "coco_category_ids", None)
    )
    evaluator = CocoEvaluator(ground_truth, mapping, backend=args.backend)
    loader = DataLoader(
        DetectionDataset(split),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=DetectionCollator(processor, num_threads=1 if args.num_workers else None),
    )
    model = model.to(accelerator.device)  # inference only: no DDP wrapper needed
    loader = accelerator.prepare(loader)  # shards the images between processes
    stats = evaluate_model(model, loader, evaluator, accelerator, processor, args.top_k)
    if accelerator.is_main_process:
        print(
            f"{args.model} on {args.dataset or 'the built-in dataset'} ({args.split}, {evaluator.num_images} images):"
        )
        print(evaluator.summary())
        if args.output is not None:
            record = {
                "model": str(args.model),
                "dataset": str(args.dataset) if args.dataset else "builtin",
                "split": args.split,
                "num_images": evaluator.num_images,
                "num_processes": accelerator.num_processes,
                "top_k": args.top_k,
                "backend": args.backend,
                "stats": stats,
            }
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(record, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
