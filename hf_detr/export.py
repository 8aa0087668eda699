"""Export for deployment: an ONNX file (torch's exporter) or a `torch.export` ExportedProgram (`.pt2`).

The exported graph takes `pixel_values` [B, 3, H, W] and, unless exported without it, `pixel_mask`
[B, H, W] (bool, True = real pixel, as the processor returns it), with batch, height and width dynamic,
and returns `logits` [B, N, K+1] and `pred_boxes` [B, N, 4] (and `pred_masks` [B, N, H/4, W/4] for a
segmentation model). It has no data-dependent control flow: padding is always masked, so one graph
serves every batch. The model's config and the processor's settings travel in the file's metadata
(`read_export_metadata`), so that a runtime without the checkpoint can pre- and post-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .commands import add_traceback_argument
from .configuration_detr import HfDetrConfig
from .extras import require_extra
from .image_processing_detr import HfDetrImageProcessor
from .modeling_detr import HfDetrForObjectDetection
from .modeling_detr_segmentation import HfDetrForSegmentation

logger = logging.getLogger("hf_detr.export")

EXPORT_FORMATS = ("onnx", "pt2")
# opset 18: the oldest the dynamo exporter writes natively, read by onnxruntime >= 1.14 and TensorRT >= 8.6
DEFAULT_OPSET = 18
# the smallest side the graph accepts: the stride-32 feature map must be at least 2x2 (torch.export
# specialises sizes 0 and 1), i.e. more than 32 pixels
MIN_SIDE = 64
MAX_SIDE = 8192
METADATA_KEYS = ("config", "preprocessor_config", "id2label", "inputs", "outputs")
_REEXPORT = "export the model again with hf-detr-export."
EXPORT_EXTRA = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}


class ExportableDetr(nn.Module):
    """A DETR model as a function of tensors only: (pixel_values[, pixel_mask]) -> (logits, pred_boxes[,
    pred_masks]), in eval mode, without auxiliary outputs."""

    def __init__(self, model: HfDetrForObjectDetection | HfDetrForSegmentation, with_pixel_mask: bool = True):
        super().__init__()
        self.model = model.eval()
        self.with_pixel_mask = with_pixel_mask
        self.output_names = ["logits", "pred_boxes"] + (["pred_masks"] if is_segmentation(model) else [])
        self.input_names = ["pixel_values"] + (["pixel_mask"] if with_pixel_mask else [])

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        outputs = self.model(
            pixel_values, pixel_mask=pixel_mask, return_dict=True, output_auxiliary_outputs=False
        )
        return tuple(getattr(outputs, name) for name in self.output_names)


def is_segmentation(model: nn.Module) -> bool:
    return isinstance(model, HfDetrForSegmentation)


def load_model(
    model_name_or_path: str | Path, **kwargs: Any
) -> HfDetrForObjectDetection | HfDetrForSegmentation:
    """A saved directory or Hub id -> the detection or segmentation model its config names."""
    config = HfDetrConfig.from_pretrained(model_name_or_path, **kwargs)
    segmentation = HfDetrForSegmentation.__name__ in (config.architectures or []) or config.use_masks
    model_class = HfDetrForSegmentation if segmentation else HfDetrForObjectDetection
    return model_class.from_pretrained(model_name_or_path, **kwargs).eval()


def load_processor(model_name_or_path: str | Path) -> HfDetrImageProcessor:
    """The checkpoint's processor, or the default one (DETR's settings) when it has none."""
    try:
        return HfDetrImageProcessor.from_pretrained(model_name_or_path)
    except OSError:
        logger.warning(
            "No preprocessor_config.json in %s: the default processor's settings are recorded.",
            model_name_or_path,
        )
        return HfDetrImageProcessor()


def example_inputs(
    batch_size: int = 2, height: int = 320, width: int = 384
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded example batch for tracing: sizes other than 0 and 1 and unequal sides, so that no
    dimension is specialised; the second image is padded at the bottom and right."""
    pixel_values = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    pixel_mask = torch.ones(batch_size, height, width, dtype=torch.bool)  # as the processor returns it
    pixel_mask[1:, height * 3 // 4 :, :] = 0
    pixel_mask[1:, :, width * 3 // 4 :] = 0
    return pixel_values * pixel_mask[:, None], pixel_mask


def dynamic_shapes(with_pixel_mask: bool) -> dict[str, dict[int, Any]]:
    """Batch, height and width dynamic; `pixel_mask` has the image's dimensions (the model's input check
    makes them equal). `Dim.DYNAMIC` rather than named dimensions: some backbones' shape arithmetic
    (ceil-mode pooling in timm's ResNet-D stems) yields guards that always hold but that sympy cannot
    prove over a range; they become runtime checks instead of export errors."""
    batch = torch.export.Dim.DYNAMIC(min=1, max=1024)
    height = torch.export.Dim.DYNAMIC(min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim.DYNAMIC(min=MIN_SIDE, max=MAX_SIDE)
    shapes: dict[str, dict[int, Any]] = {"pixel_values": {0: batch, 2: height, 3: width}}
    if with_pixel_mask:
        shapes["pixel_mask"] = {0: batch, 1: height, 2: width}
    return shapes


def export_metadata(
    model: nn.Module, processor: HfDetrImageProcessor, wrapper: ExportableDetr
) -> dict[str, str]:
    """What a runtime needs besides the graph, as JSON strings: the model config, the processor's
    settings, `id2label`, and the input and output names."""
    config = model.config
    return {
        "config": config.to_json_string(use_diff=False),
        "preprocessor_config": processor.to_json_string(),
        "id2label": json.dumps({str(k): v for k, v in config.id2label.items()}),
        "inputs": json.dumps(wrapper.input_names),
        "outputs": json.dumps(wrapper.output_names),
    }


def trace(wrapper: ExportableDetr, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export with dynamic batch, height and width (non-strict: the model is plain PyTorch)."""
    names = wrapper.input_names
    with torch.no_grad():
        return torch.export.export(
            wrapper, inputs[: len(names)], dynamic_shapes=dynamic_shapes(len(names) == 2), strict=False
        )


def export_onnx(
    wrapper: ExportableDetr,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    metadata: dict[str, str],
    opset: int,
) -> None:
    """The ExportedProgram translated by torch's ONNX exporter, checked by `onnx.checker`, with metadata."""
    import onnx

    program = trace(wrapper, inputs)
    onnx_program = torch.onnx.export(
        program,
        input_names=wrapper.input_names,
        output_names=wrapper.output_names,
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    model_proto = onnx_program.model_proto
    name_dynamic_dimensions(model_proto)
    for key, value in metadata.items():
        model_proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model_proto, full_check=True)
    onnx.save(model_proto, str(path))


def name_dynamic_dimensions(model_proto: Any) -> None:
    """Call the exporter's symbols for the input dimensions (s0, s1, ...) batch, height and width, in
    the inputs, outputs and intermediate shapes."""
    pixel_values = next(i for i in model_proto.graph.input if i.name == "pixel_values")
    dims = pixel_values.type.tensor_type.shape.dim
    names = {dims[0].dim_param: "batch", dims[2].dim_param: "height", dims[3].dim_param: "width"}
    names.pop("", None)
    graph = model_proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def export_program(
    wrapper: ExportableDetr, inputs: tuple[torch.Tensor, ...], path: Path, metadata: dict[str, str]
) -> None:
    torch.export.save(
        trace(wrapper, inputs), str(path), extra_files={f"{k}.json": v for k, v in metadata.items()}
    )


def export_model(
    model: str | Path | nn.Module,
    output_path: str | Path,
    export_format: str | None = None,
    opset: int = DEFAULT_OPSET,
    with_pixel_mask: bool = True,
    processor: HfDetrImageProcessor | None = None,
    verify: bool = True,
) -> Path:
    """Export `model` (a model, a saved directory or a Hub id) to `output_path`: ONNX (`.onnx`) or an
    ExportedProgram (`.pt2`); the format follows the suffix unless `export_format` says. With `verify`,
    the exported graph is run on a batch of another size and shape than the example and compared with
    the eager model (raises beyond 1e-4)."""
    output_path = Path(output_path)
    export_format = export_format or output_path.suffix.lstrip(".")
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r} (from {output_path.name}); expected one of {EXPORT_FORMATS}."
        )
    if export_format == "onnx":
        require_extra("ONNX export", EXPORT_EXTRA, extra="export")
    if isinstance(model, (str, Path)):
        processor = processor or load_processor(model)
        model = load_model(model)
    if not isinstance(model, (HfDetrForObjectDetection, HfDetrForSegmentation)):
        raise TypeError(f"Expected an HfDetr detection or segmentation model, got {type(model).__name__}.")
    processor = processor or HfDetrImageProcessor()
    model = model.float().cpu().eval()
    wrapper = ExportableDetr(model, with_pixel_mask)
    metadata = export_metadata(model, processor, wrapper)
    inputs = example_inputs()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if export_format == "onnx":
        export_onnx(wrapper, inputs, output_path, metadata, opset)
    else:
        export_program(wrapper, inputs, output_path, metadata)
    if verify:
        difference = max_output_difference(wrapper, output_path, verification_inputs(with_pixel_mask))
        if difference > 1e-4:
            raise RuntimeError(f"The exported model differs from the eager one by {difference:.2e} (> 1e-4).")
        logger.info(
            "Exported %s; largest output difference from the eager model %.1e.", output_path, difference
        )
    return output_path


def verification_inputs(with_pixel_mask: bool) -> tuple[torch.Tensor, ...]:
    """A batch of 3 at 256x448 (neither the example's size nor its aspect ratio), differently padded."""
    pixel_values, pixel_mask = example_inputs(batch_size=3, height=256, width=448)
    pixel_mask[2, :, 200:] = 0
    pixel_values = pixel_values * pixel_mask[:, None]
    return (pixel_values, pixel_mask) if with_pixel_mask else (pixel_values,)


def load_exported(path: str | Path):
    """An ONNX file -> an onnxruntime session (CPU); a `.pt2` file -> the ExportedProgram's module."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.export.load(str(path)).module()


def run_exported(runner: Any, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Outputs of an onnxruntime session or an ExportedProgram module on torch inputs, as torch tensors."""
    if hasattr(runner, "get_inputs"):
        feeds = {
            spec.name: tensor.numpy().astype(bool if spec.type == "tensor(bool)" else np.float32)
            for spec, tensor in zip(runner.get_inputs(), inputs)
        }
        outputs = runner.run(None, feeds)
        return [torch.from_numpy(output) for output in outputs]
    with torch.no_grad():  # the graph's pixel_mask is bool, as the processor returns it
        return list(runner(*[t if t.is_floating_point() else t.bool() for t in inputs]))


def max_output_difference(wrapper: ExportableDetr, path: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    with torch.no_grad():
        expected = wrapper(*inputs)
    actual = run_exported(load_exported(path), inputs)
    return max(float((e - a).abs().max()) for e, a in zip(expected, actual))


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata `export_model` wrote: {"config", "preprocessor_config", "id2label", "inputs",
    "outputs"}, decoded from JSON (`id2label` keys as ints)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        files = {f"{key}.json": "" for key in METADATA_KEYS}
        torch.export.load(str(path), extra_files=files)
        props = {name.removesuffix(".json"): value for name, value in files.items() if value}
    missing = [key for key in METADATA_KEYS if key not in props]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(missing)} metadata: it was not written by hf-detr-export."
        )
    metadata = {key: _metadata_entry(path, key, props[key]) for key in METADATA_KEYS}
    try:
        metadata["id2label"] = {int(k): v for k, v in metadata["id2label"].items()}
    except ValueError as error:
        raise ValueError(
            f"{path}: its 'id2label' metadata must have class ids as keys ({error}); {_REEXPORT}"
        ) from error
    try:
        processor_from_metadata(metadata)  # the settings checked now, naming the file
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its 'preprocessor_config' metadata cannot be used: {error}") from error
    return metadata


def _metadata_entry(path: Path, key: str, text: str) -> Any:
    """One metadata entry decoded from JSON: an object, or a list for "inputs" and "outputs"; else a
    ValueError naming the file and the entry."""
    expected = list if key in ("inputs", "outputs") else dict
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its {key!r} metadata is not JSON ({error}); {_REEXPORT}") from error
    if not isinstance(value, expected):
        kind = "a list" if expected is list else "an object"
        raise ValueError(
            f"{path}: its {key!r} metadata must be {kind} in JSON, got {type(value).__name__}; {_REEXPORT}"
        )
    return value


def processor_from_metadata(metadata: dict[str, Any]) -> HfDetrImageProcessor:
    """The processor whose settings an exported file records (`read_export_metadata` has checked them)."""
    settings = dict(metadata["preprocessor_config"])
    settings.pop("image_processor_type", None)
    settings.pop("auto_map", None)
    return HfDetrImageProcessor(**settings)


def quantize_onnx(input_path: str | Path, output_path: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of the matrix products (the transformer's and the heads'
    linear layers; the backbone's convolutions stay fp32), metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output_path = Path(output_path)
    quantize_dynamic(
        str(input_path),
        str(output_path),
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
    )
    source = {p.key: p.value for p in onnx.load(str(input_path), load_external_data=False).metadata_props}
    quantized = onnx.load(str(output_path))
    present = {p.key for p in quantized.metadata_props}
    for key in METADATA_KEYS:
        if key in source and key not in present:
            quantized.metadata_props.add(key=key, value=source[key])
    onnx.save(quantized, str(output_path))
    return output_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-detr-export",
        description="Export a DETR checkpoint to ONNX (.onnx) or a torch.export ExportedProgram (.pt2) "
        "with dynamic batch, height and width.",
    )
    parser.add_argument("model", help="a saved model directory or a Hub model id")
    parser.add_argument("output", help="the file to write: model.onnx or model.pt2")
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, default=None,
        help="onnx or pt2 (a torch.export ExportedProgram) (default: from the output's suffix)",
    )  # fmt: skip
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset version to target (default: {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--no-pixel-mask", action="store_true", help="a graph with pixel_values only (all pixels real)"
    )
    parser.add_argument(
        "--quantize", choices=("int8",), default=None,
        help="ONNX only: also write <output>.int8.onnx with dynamic int8 weights (default: none)",
    )  # fmt: skip
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with the eager model")
    add_traceback_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    path = export_model(
        args.model, args.output, export_format=args.format, opset=args.opset,
        with_pixel_mask=not args.no_pixel_mask, verify=not args.no_verify,
    )  # fmt: skip
    print(f"Exported {path}")
    if args.quantize:
        if path.suffix != ".onnx":
            print("error: --quantize int8 needs an ONNX output", file=sys.stderr)
            return 1
        print(f"Quantized {quantize_onnx(path, path.with_suffix('.int8.onnx'))}")
    return 0


__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportableDetr",
    "export_model",
    "load_exported",
    "processor_from_metadata",
    "quantize_onnx",
    "read_export_metadata",
    "run_exported",
]
