"""COCO detection AP as an `evaluate` metric.

    import evaluate
    metric = evaluate.load("path/to/hf_detr/evaluation/coco_detection.py")
    metric.add_batch(predictions=[{"image_id": 1, "boxes": [[x0, y0, x1, y1]], "scores": [0.9], "labels": [17]}],
                     references=[{"image_id": 1, "width": 640, "height": 480, "boxes": [[x, y, w, h]],
                                  "labels": [17], "iscrowd": [0], "area": [5000.0]}])
    metric.compute()  # {"AP": ..., "AP50": ..., ..., "ARl": ...}

Predictions are post-processed detections (absolute x0, y0, x1, y1); references are COCO ground
truth (absolute x, y, w, h). Labels are category ids, shared by both. `evaluate.load` copies this
file into its cache, so it imports hf_detr absolutely, one module per import line.
"""

import datasets
import evaluate

import hf_detr.evaluation.coco_evaluator

_DESCRIPTION = (
    "COCO box AP@[.5:.95], AP50, AP75, APs/m/l and AR@1/10/100, ARs/m/l (faster-coco-eval or pycocotools)."
)
_CITATION = """@inproceedings{lin2014coco,
  title={Microsoft COCO: Common Objects in Context}, author={Lin, Tsung-Yi and others},
  booktitle={European Conference on Computer Vision (ECCV)}, year={2014}}"""
_INPUTS = """
Args:
    predictions: per image {"image_id", "boxes" [[x0, y0, x1, y1]], "scores", "labels"}.
    references: per image {"image_id", "width", "height", "boxes" [[x, y, w, h]], "labels", "iscrowd", "area"}.
    backend: "faster_coco_eval" (default) or "pycocotools".
Returns:
    dict with AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl (in [0, 1]).
"""

_BOXES = datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=4))


class CocoDetection(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": {
                        "image_id": datasets.Value("int64"),
                        "boxes": _BOXES,
                        "scores": datasets.Sequence(datasets.Value("float64")),
                        "labels": datasets.Sequence(datasets.Value("int64")),
                    },
                    "references": {
                        "image_id": datasets.Value("int64"),
                        "width": datasets.Value("int64"),
                        "height": datasets.Value("int64"),
                        "boxes": _BOXES,
                        "labels": datasets.Sequence(datasets.Value("int64")),
                        "iscrowd": datasets.Sequence(datasets.Value("int64")),
                        "area": datasets.Sequence(datasets.Value("float64")),
                    },
                }
            ),
        )

    def _compute(self, predictions, references, backend="faster_coco_eval"):
        images, annotations, categories = [], [], set()
        for reference in references:
            images.append(
                {"id": reference["image_id"], "width": reference["width"], "height": reference["height"]}
            )
            for box, label, crowd, area in zip(
                reference["boxes"], reference["labels"], reference["iscrowd"], reference["area"]
            ):
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": reference["image_id"], "bbox": list(box),
                     "category_id": label, "iscrowd": crowd, "area": area}
                )  # fmt: skip
                categories.add(label)
        for prediction in predictions:
            categories.update(prediction["labels"])
        ground_truth = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in sorted(categories)],
        }
        evaluator = hf_detr.evaluation.coco_evaluator.CocoEvaluator(ground_truth, backend=backend)
        evaluator.update(
            [p["image_id"] for p in predictions],
            [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]} for p in predictions],
        )
        return evaluator.compute()
