"""Deployment on CPU: our eager fp32, bf16 (autocast), onnxruntime fp32 and int8, against transformers'
eager fp32 on the same weights and inputs; with the agreement of each with fp32.

1. Speed: DETR-R50 at 800x1066, batch 1 and 4 (median of --runs after a warm-up), and each variant's
   largest logits deviation from our fp32 on the real COCO photo in tests/data.
2. Parity of the exported graphs (ONNX under onnxruntime, the .pt2 ExportedProgram) with eager, for
   R50 and DC5, on padded batches of sizes and aspect ratios the export never saw.
3. A trained model (the main job's, --trained; skipped when absent) on the built-in validation
   images: COCO AP of each variant, and the share of fp32 detections with score > 0.5 found again
   with the same label at IoU > 0.9.

    python benchmarks/bench_export.py [--runs 3] [--batch-sizes 1 4] [--trained outputs/hf-detr-shapes]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from types import SimpleNamespace

import onnxruntime
import PIL.Image
import torch
from bench_forward import build_models  # run from benchmarks/ or with it on sys.path
from timing import median_seconds
from torchvision.ops import box_iou

from hf_detr import HfDetrConfig, HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.export import export_model, quantize_onnx, run_exported

COCO_PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-val2017-39769" / "000000039769.png"


class OnnxModel(torch.nn.Module):
    """An onnxruntime session behind the model's call signature (torch in, torch out)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> SimpleNamespace:
        logits, boxes = run_exported(self.session, (pixel_values, pixel_mask))
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


class Bf16Model(torch.nn.Module):
    """Our eager model under CPU autocast to bf16 (outputs back in fp32)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> SimpleNamespace:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return SimpleNamespace(logits=outputs.logits.float(), pred_boxes=outputs.pred_boxes.float())


def variants(model: HfDetrForObjectDetection, directory: Path) -> dict[str, torch.nn.Module]:
    """fp32 eager, bf16 eager, onnxruntime fp32 and int8 of `model` (exported into `directory`)."""
    onnx_path = export_model(model, directory / "model.onnx", verify=False)
    int8_path = quantize_onnx(onnx_path, directory / "model.int8.onnx")
    threads = torch.get_num_threads()
    return {
        "hf_detr fp32": model,
        "hf_detr bf16": Bf16Model(model),
        "onnxruntime fp32": OnnxModel(onnx_path, threads),
        "onnxruntime int8": OnnxModel(int8_path, threads),
    }


def speed(args: argparse.Namespace) -> None:
    reference, ours = build_models(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"transformers fp32": reference, **variants(ours, Path(tmp))}
        print(f"\n1. DETR-R50 {args.height}x{args.width} on CPU ({torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}), torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}")  # fmt: skip
        photo = real_photo_inputs()
        with torch.inference_mode():
            base = ours(**photo).logits
            deviation = {
                name: float((run(**photo).logits - base).abs().max()) for name, run in runners.items()
            }
        for batch_size in args.batch_sizes:
            pixel_values = torch.randn(
                batch_size, 3, args.height, args.width, generator=torch.Generator().manual_seed(0)
            )
            inputs = {
                "pixel_values": pixel_values,
                "pixel_mask": torch.ones(batch_size, args.height, args.width, dtype=torch.long),
            }
            times = {}
            with torch.inference_mode():
                for name, run in runners.items():
                    times[name] = median_seconds(lambda r=run, x=inputs: r(**x), args.runs, 1)
            peer = times["transformers fp32"]
            print(
                f"batch {batch_size}: {'variant':>18} | seconds | vs transformers | max |Δlogits| on the photo"
            )
            for name, seconds in times.items():
                print(f"{'':9}{name:>18} | {seconds:7.3f} | {peer / seconds:13.2f}x | {deviation[name]:.1e}")


def real_photo_inputs() -> dict[str, torch.Tensor]:
    image = PIL.Image.open(COCO_PHOTO).convert("RGB")
    return dict(HfDetrImageProcessor()(images=image, return_tensors="pt"))


def parity(args: argparse.Namespace) -> None:
    print(
        "\n2. Exported graphs against eager, padded batches never seen at export (max |Δ| of logits, boxes)"
    )
    batches = {"batch 3, 640x960 / 800x600 / 512x1066": [(640, 960), (800, 600), (512, 1066)],
               "batch 1, 480x1200": [(480, 1200)]}  # fmt: skip
    for name, config in (("R50", HfDetrConfig()), ("DC5", HfDetrConfig(dilation=True))):
        torch.manual_seed(0)
        model = HfDetrForObjectDetection(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("onnx", "pt2"):
                path = export_model(model, Path(tmp) / f"model.{fmt}", verify=False)
                runner = (
                    OnnxModel(path, torch.get_num_threads()).session
                    if fmt == "onnx"
                    else torch.export.load(str(path)).module()
                )
                for label, sizes in batches.items():
                    pixel_values, pixel_mask = padded(sizes)
                    with torch.inference_mode():
                        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
                    logits, boxes = run_exported(runner, (pixel_values, pixel_mask))
                    d_logits = float((logits - expected.logits).abs().max())
                    d_boxes = float((boxes - expected.pred_boxes).abs().max())
                    print(f"{name} {fmt:>4} {label:>38}: {d_logits:.1e}, {d_boxes:.1e}")


def padded(sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(sizes))
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    pixel_values = torch.zeros(len(sizes), 3, height, width)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.bool)
    for index, (h, w) in enumerate(sizes):
        pixel_values[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        pixel_mask[index, :h, :w] = True
    return pixel_values, pixel_mask


def trained_agreement(args: argparse.Namespace) -> None:
    from hf_detr.data import DetectionCollator, DetectionDataset, load_detection_dataset
    from hf_detr.evaluation import CocoEvaluator
    from hf_detr.evaluation.coco_evaluator import label_to_category_mapping, split_to_coco
    from hf_detr.evaluation.loop import evaluate_model

    if not (Path(args.trained) / "config.json").is_file():
        print(f"\n3. skipped: no trained model in {args.trained} (run hf-detr-train first)")
        return
    model = HfDetrForObjectDetection.from_pretrained(args.trained).eval()
    processor = HfDetrImageProcessor.from_pretrained(args.trained)
    split = load_detection_dataset(None, split="val")["val"]
    ground_truth = split_to_coco(split)
    mapping = label_to_category_mapping(
        model.config.id2label, ground_truth["categories"], model.config.coco_category_ids
    )
    loader = torch.utils.data.DataLoader(
        DetectionDataset(split), batch_size=16, collate_fn=DetectionCollator(processor)
    )
    batches = list(loader)
    print(f"\n3. The trained model {args.trained} on the built-in val images ({len(split)}): AP, and the fp32 "
          "detections (score > 0.5) found again (same label, IoU > 0.9)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        runners = variants(model, Path(tmp))
        detections, stats = {}, {}
        for name, run in runners.items():
            detections[name] = [detect(run, processor, batch) for batch in batches]
            evaluator = CocoEvaluator(ground_truth, mapping)
            stats[name] = evaluate_model(run, batches, evaluator, processor=processor, progress=False)
    reference = [d for batch in detections["hf_detr fp32"] for d in batch]
    for name in runners:
        found = kept_share(reference, [d for batch in detections[name] for d in batch])
        change = stats[name]["AP"] - stats["hf_detr fp32"]["AP"]
        print(
            f"{name:>18}: AP {stats[name]['AP']:.4f} ({change:+.4f}), AP50 {stats[name]['AP50']:.4f}, detections kept {found:.2%}"
        )


def detect(run: torch.nn.Module, processor: HfDetrImageProcessor, batch: dict) -> list[dict]:
    with torch.inference_mode():
        outputs = run(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    sizes = torch.stack([label["orig_size"] for label in batch["labels"]])
    return processor.post_process_object_detection(outputs, 0.0, sizes)


def kept_share(reference: list[dict], candidate: list[dict]) -> float:
    """Share of the reference's detections with score > 0.5 that `candidate` has too: same label,
    IoU > 0.9, score > 0.5."""
    total = found = 0
    for ref, cand in zip(reference, candidate):
        ref_keep, cand_keep = ref["scores"] > 0.5, cand["scores"] > 0.5
        ref_boxes, cand_boxes = ref["boxes"][ref_keep], cand["boxes"][cand_keep]
        total += len(ref_boxes)
        if len(ref_boxes) and len(cand_boxes):
            same_label = ref["labels"][ref_keep][:, None] == cand["labels"][cand_keep][None, :]
            found += int(((box_iou(ref_boxes, cand_boxes) > 0.9) & same_label).any(1).sum())
    return found / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--trained", default="outputs/hf-detr-shapes")
    parser.add_argument("--parts", nargs="+", default=["speed", "parity", "trained"])
    args = parser.parse_args()
    for part in args.parts:
        {"speed": speed, "parity": parity, "trained": trained_agreement}[part](args)


if __name__ == "__main__":
    main()
