"""`hf-detr-evaluate` / `scripts/evaluate_coco.py`: COCO AP of a model on a detection dataset, or
panoptic quality of a segmentation model on a panoptic one (`--task panoptic`).

Detection prints the 12 COCO stats and the per-class table (AP, AP50, AR100); `--output` writes both
as JSON, and confusion_matrix.json / .png and pr_curve.png go to `--plots-dir` (default: beside
`--output`; no pictures without either).

    python scripts/evaluate_coco.py --model DIR_OR_REPO --dataset NAME_OR_PATH --split val \\
        [--batch-size 8] [--output results.json] [--plots-dir DIR]
    python scripts/evaluate_coco.py --task panoptic --model DIR --dataset COCO_PANOPTIC_FOLDER --split val2017
    accelerate launch scripts/evaluate_coco.py ...   # every process evaluates its shard
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..commands import add_traceback_argument, positive_int, probability, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-detr-evaluate", description="COCO box AP of an hf_detr model.")
    parser.add_argument(
        "--model", required=True, help="the model to evaluate: a save_pretrained directory or a Hub repo id"
    )
    parser.add_argument(
        "--task", choices=("detection", "panoptic"), default="detection",
        help="detection (COCO box AP) or panoptic (PQ, SQ, RQ of a segmentation model) (default: detection)",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=probability, default=0.85,
        help="panoptic: keep segments whose class score exceeds this, 0-1 (default: 0.85, the official code's)",
    )  # fmt: skip
    parser.add_argument(
        "--stuff-categories", nargs="*", default=None,
        help="panoptic Hub/parquet data: names or ids of its stuff classes (default: none, all are things)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default=None,
        help="COCO folder, parquet/arrow path or Hub dataset name (default: the built-in synthetic set)",
    )  # fmt: skip
    parser.add_argument("--split", default="val", help="the dataset split to evaluate (default: val)")
    parser.add_argument(
        "--streaming", action="store_true",
        help="detection: stream a Hub/parquet/arrow dataset, each process its part (default: download it)",
    )  # fmt: skip
    parser.add_argument(
        "--bbox-format", choices=("xywh", "xyxy"), default="xywh",
        help="box format of a Hub/parquet dataset: xywh (COCO's) or xyxy, in pixels (default: xywh)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch and process (default: 8)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=0,
        help="DataLoader worker processes per process (default: 0, load in the main process)",
    )  # fmt: skip
    parser.add_argument(
        "--top-k", type=positive_int, default=None,
        help="keep the best k (query, class) pairs per image (default: every query's best class, the paper's)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=("faster_coco_eval", "pycocotools"), default="faster_coco_eval",
        help="the library that computes the COCO metrics (default: faster_coco_eval)",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=None,
        help="write the stats and the per-class table to this JSON file (default: print only)",
    )  # fmt: skip
    parser.add_argument(
        "--plots-dir", type=Path, default=None,
        help="detection: write confusion_matrix.png/.json and pr_curve.png here (default: beside --output)",
    )  # fmt: skip
    parser.add_argument(
        "--confusion-score-threshold", type=probability, default=0.5,
        help="detection: detections scoring at least this enter the confusion matrix (default: 0.5)",
    )  # fmt: skip
    parser.add_argument(
        "--confusion-iou-threshold", type=probability, default=0.5,
        help="detection: IoU at which a detection matches an object in the confusion matrix (default: 0.5)",
    )  # fmt: skip
    add_traceback_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .tasks import task_for

    task = task_for(args.task)
    if args.streaming and not task.streams:
        parser.error("--streaming evaluates detection models only (--task detection)")
    from accelerate import Accelerator

    from ..image_processing_detr import HfDetrImageProcessor
    from ..processes import warn_fewer_processes

    accelerator = Accelerator()
    warn_fewer_processes(accelerator.num_processes)
    try:
        processor = HfDetrImageProcessor.from_pretrained(args.model)
    except OSError:
        processor = HfDetrImageProcessor()
    stats, record, summary = _evaluate(task, args, accelerator, processor)
    if accelerator.is_main_process:
        print(
            f"{args.model} on {args.dataset or 'the built-in dataset'} ({args.split}, {record['num_images']} images):"
        )
        print(summary)
        if args.output is not None:
            record = {"model": str(args.model), "task": args.task,
                      "dataset": str(args.dataset) if args.dataset else "builtin", "split": args.split,
                      "num_processes": accelerator.num_processes, **record, "stats": stats}  # fmt: skip
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(record, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def _evaluate(task, args, accelerator, processor):
    """The task's model, split, evaluator, loader and loop (hf_detr/evaluation/tasks.py); the stats,
    the record of the settings and the table to print."""
    model = task.load_model(args.model).to(accelerator.device)  # no DDP needed
    with accelerator.local_main_process_first():  # one process per machine converts a folder into the cache
        split = task.load_dataset(
            args.dataset, args.split, bbox_format=args.bbox_format, streaming=args.streaming,
            stuff_categories=args.stuff_categories,
        )[args.split]  # fmt: skip
    evaluator = task.evaluator_factory(model.config, split, backend=args.backend)()
    collator = task.collator(processor, train=False, num_threads=1 if args.num_workers else None)
    if args.streaming:  # every image once: each process reads its part of the stream
        from ..data.streaming import streaming_eval_loader

        loader = streaming_eval_loader(split, args.batch_size, args.num_workers, accelerator, collator)
    else:
        loader = _loader(task.dataset(split), args, accelerator, collator)
    settings = {"top_k": args.top_k, "threshold": args.threshold, "mask_ap": True}
    stats = task.evaluate(model, loader, evaluator, accelerator, processor, **settings)
    record = {"num_images": evaluator.num_images, **{name: getattr(args, name) for name in task.settings}}
    if not accelerator.is_main_process:
        return stats, record, ""
    if task.per_class_report:
        record.update(_per_class_report(evaluator, args))
    return stats, record, task.summary(evaluator, stats)


def _loader(dataset, args, accelerator, collator):
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collator
    )
    return accelerator.prepare(loader)  # shards the images between processes


def _per_class_report(evaluator, args) -> dict:
    """The per-class table, and the confusion matrix and PR curves in `--plots-dir` (else beside
    `--output`; none without either)."""
    record = {"per_class": evaluator.per_class}
    plots_dir = args.plots_dir or (args.output.parent if args.output is not None else None)
    if plots_dir is not None:
        from .report import write_metric_plots

        plots = write_metric_plots(
            evaluator, plots_dir, score_threshold=args.confusion_score_threshold,
            iou_threshold=args.confusion_iou_threshold,
        )  # fmt: skip
        matrix = plots["confusion_matrix"]
        record["confusion_matrix"] = {key: matrix[key] for key in ("score_threshold", "iou_threshold")}
        record["plots"] = plots["files"]
    return record


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(run_command(main))
