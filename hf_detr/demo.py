"""`hf-detr-demo`: a local web page (Gradio, the Hub's convention: the same app runs as a Space) to try a
detector on a picture or a video, and to see where DETR looks.

    hf-detr-demo --model outputs/hf-detr-shapes        # then open http://127.0.0.1:7860

Upload a picture and move the threshold; click a detection to see its query's decoder cross-attention
(paper figure 6), or any other pixel to see the encoder self-attention of that place (figure 3). Upload a
video to get it back annotated, with its detections as JSON lines. Needs the [demo] extra (gradio; the
video tab also needs [video]).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from .commands import add_traceback_argument, positive_int, probability, run_command
from .extras import require_extra
from .predict import detection_records, query_of_detections
from .visualization import (
    decoder_attention_map,
    draw_detections,
    encoder_attention_map,
    feature_cell,
    heat_overlay,
    mark_pixel,
    side_by_side,
)

DEMO_EXTRA = {"gradio": "gradio"}
TITLE = "DETR: detections and where the transformer looks"


@dataclass
class Analysis:
    """One picture's forward pass (batch of one, with attentions) and its kept detections."""

    image: PIL.Image.Image
    outputs: Any
    detections: dict[str, torch.Tensor]
    queries: list[int]  # the query of each detection


class DetrDemo:
    """What the page does, without the page: detect, then explain a clicked pixel."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model.eval(), processor
        self.names = {int(k): v for k, v in model.config.id2label.items()}

    def detect(self, image: PIL.Image.Image, threshold: float) -> tuple[PIL.Image.Image, Analysis, str]:
        """The picture with its detections drawn, what a click needs, and one line per detection."""
        image = image.convert("RGB")
        inputs = self.processor([image], device=next(self.model.parameters()).device)
        with torch.no_grad():
            outputs = self.model(**inputs, output_attentions=True, output_feature_mask=True)
        (detections,) = self.processor.post_process_object_detection(
            outputs, threshold, [(image.height, image.width)]
        )
        detections = {key: value.cpu() for key, value in detections.items()}
        queries = query_of_detections(outputs, [detections], threshold, None)[0]
        labels, scores = detections["labels"].tolist(), detections["scores"].tolist()
        drawn = draw_detections(image, detections["boxes"], labels, scores, self.names)
        records = detection_records("picture", detections, self.names)
        summary = "\n".join(f"- {r['label']} {r['score']:.2f}" for r in records) or "No detection above the threshold."
        return drawn, Analysis(image, outputs, detections, queries), summary

    def explain(self, analysis: Analysis, x: float, y: float) -> tuple[PIL.Image.Image, str]:
        """A click at pixel (x, y): the decoder attention of the smallest detection around it, else the
        encoder attention of that pixel."""
        boxes = analysis.detections["boxes"]
        inside = [
            k for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()) if x0 <= x <= x1 and y0 <= y <= y1
        ]
        if inside:
            k = min(inside, key=lambda i: float((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])))
            return self._decoder_attention(analysis, k)
        return self._encoder_attention(analysis, x, y)

    def _decoder_attention(self, analysis: Analysis, k: int) -> tuple[PIL.Image.Image, str]:
        detections, image = analysis.detections, analysis.image
        label, score = int(detections["labels"][k]), float(detections["scores"][k])
        query = analysis.queries[k]
        heat = heat_overlay(image, decoder_attention_map(analysis.outputs, 0, query).cpu())
        box = detections["boxes"][k : k + 1]
        picture = side_by_side(
            draw_detections(image, box, [label], [score], self.names),
            draw_detections(heat, box, [label], [score], self.names),
        )
        name = self.names.get(label, str(label))
        return picture, f"Decoder attention of detection {k + 1}: {name} {score:.2f} (query {query})"

    def _encoder_attention(self, analysis: Analysis, x: float, y: float) -> tuple[PIL.Image.Image, str]:
        mask = analysis.outputs.feature_mask[0]
        rows, columns = int(mask[:, 0].sum()), int(mask[0].sum())
        row, column = feature_cell(x, y, analysis.image.size, (rows, columns))
        heat = heat_overlay(analysis.image, encoder_attention_map(analysis.outputs, 0, row, column).cpu())
        text = f"Encoder attention of pixel ({x:.0f}, {y:.0f}): feature cell ({row}, {column}) of {rows}x{columns}"
        return mark_pixel(heat, x, y), text

    def video(self, path: str, threshold: float, every: int = 1) -> tuple[str, str]:
        """An uploaded video annotated (MP4 for the browser) and its detections (JSON lines)."""
        from .predict_video import predict_video

        folder = Path(tempfile.mkdtemp(prefix="hf-detr-demo-"))
        args = argparse.Namespace(threshold=threshold, top_k=None, batch_size=4, every=every, max_frames=None, track=False)
        lines = folder / "detections.jsonl"
        with lines.open("w") as out:
            predict_video(path, folder / "annotated.mp4", self.model, self.processor, args, self.names, out)
        return str(folder / "annotated.mp4"), str(lines)


def build_demo(model_dir: str, device: str = "cpu", threshold: float = 0.7) -> Any:
    """The Gradio app (`gr.Blocks`) for the checkpoint at `model_dir` (a folder or a Hub repo id)."""
    require_extra("The demo", DEMO_EXTRA, "demo")
    import gradio as gr

    from .image_processing_detr import HfDetrImageProcessor
    from .modeling_detr import HfDetrForObjectDetection

    model = HfDetrForObjectDetection.from_pretrained(model_dir).to(device)
    try:
        processor = HfDetrImageProcessor.from_pretrained(model_dir)
    except OSError:
        processor = HfDetrImageProcessor()
    demo = DetrDemo(model, processor)
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"## {TITLE}\nModel: `{model_dir}`. Click a detection for its decoder attention, "
                    "any other pixel for the encoder's attention there.")  # fmt: skip
        _picture_tab(gr, demo, threshold)
        _video_tab(gr, demo, threshold)
    return app


def _picture_tab(gr: Any, demo: DetrDemo, threshold: float) -> None:
    with gr.Tab("Picture"):
        with gr.Row():
            picture = gr.Image(type="pil", label="Picture", elem_id="picture", sources=["upload", "clipboard"])
            drawn = gr.Image(type="pil", label="Detections (click one)", elem_id="detections", interactive=False)
        slider = gr.Slider(0, 1, value=threshold, step=0.01, label="Threshold", elem_id="threshold")
        detect = gr.Button("Detect", elem_id="detect", variant="primary")
        summary = gr.Markdown(elem_id="summary")
        attention = gr.Image(type="pil", label="Attention", elem_id="attention", interactive=False)
        info = gr.Markdown(elem_id="attention-info")
        state = gr.State()

        def run(image: PIL.Image.Image | None, value: float):
            if image is None:
                raise gr.Error("Upload a picture first.")
            return demo.detect(image, value)

        def click(analysis: Analysis | None, event: gr.SelectData):
            if analysis is None:
                raise gr.Error("Detect first, then click the detections.")
            return demo.explain(analysis, *event.index)

        click.__annotations__["event"] = gr.SelectData  # how Gradio finds the event argument (not a string)

        for trigger in (detect.click, slider.release):
            trigger(run, inputs=[picture, slider], outputs=[drawn, state, summary])
        drawn.select(click, inputs=[state], outputs=[attention, info])


def _video_tab(gr: Any, demo: DetrDemo, threshold: float) -> None:
    with gr.Tab("Video"):
        video = gr.Video(label="Video", elem_id="video", sources=["upload"])
        slider = gr.Slider(0, 1, value=threshold, step=0.01, label="Threshold")
        every = gr.Number(value=1, precision=0, minimum=1, label="Every N-th frame")
        run = gr.Button("Detect", variant="primary")
        annotated = gr.Video(label="Annotated", elem_id="annotated")
        records = gr.File(label="detections.jsonl")

        def detect(path: str | None, value: float, step: float):
            if not path:
                raise gr.Error("Upload a video first.")
            return demo.video(path, value, max(1, int(step or 1)))

        run.click(detect, inputs=[video, slider, every], outputs=[annotated, records])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-detr-demo", description="A local web page to try a DETR checkpoint.")
    parser.add_argument("--model", required=True, help="a save_pretrained directory or a Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument("--device", default="cpu", help="torch device to run on: cpu, cuda, ... (default: cpu)")
    parser.add_argument(
        "--threshold", type=probability, default=0.7, help="the slider's starting score threshold, 0-1 (default: 0.7)"
    )
    add_traceback_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    app = build_demo(args.model, args.device, args.threshold)
    app.launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
