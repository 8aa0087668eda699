"""Parity of converted checkpoints with the reference implementations (fp32, max abs diff <= 1e-4).

The reference is transformers' `DetrForObjectDetection` with random weights. Its auxiliary-loss path
is not the official architecture: with `auxiliary_loss=True` it feeds each decoder layer the
LayerNorm'd output of the previous one and normalizes the last output twice, so its predictions change
with the flag. The official code (and hf_detr) applies the decoder's final LayerNorm only to the
outputs that feed the heads. The reference auxiliary outputs are therefore taken from transformers'
own modules on its official-equivalent path (`auxiliary_loss=False`): each decoder layer's output,
captured by a forward hook, through `decoder.layernorm` and the heads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from detr_testing import TINY_TRANSFORMER, max_abs_diff, padded_batch, randomize_for_parity
from safetensors.torch import load_file
from transformers import DetrConfig, DetrForObjectDetection, DetrForSegmentation, ResNetConfig

from hf_detr import HfDetrForObjectDetection, HfDetrForSegmentation, HfDetrImageProcessor
from hf_detr.convert import main as convert_main

TOLERANCE = 1e-4


def _tiny_transformers_config(**overrides) -> DetrConfig:
    kwargs = dict(
        backbone="resnet18",
        num_labels=7,
        auxiliary_loss=False,
        encoder_attention_heads=TINY_TRANSFORMER["encoder_attention_heads"],
        decoder_attention_heads=TINY_TRANSFORMER["decoder_attention_heads"],
        **{k: v for k, v in TINY_TRANSFORMER.items() if not k.endswith("heads")},
    )
    kwargs.update(overrides)
    return DetrConfig(**{k: v for k, v in kwargs.items() if v is not None})  # None: transformers' default


@torch.no_grad()
def reference_outputs(model: DetrForObjectDetection, pixel_values, pixel_mask):
    """Final and per-layer (official auxiliary) predictions of a transformers DETR."""
    assert not model.config.auxiliary_loss, "the reference must run the official-equivalent path"
    layer_outputs = []
    hooks = [
        layer.register_forward_hook(lambda _module, _inputs, output: layer_outputs.append(output))
        for layer in model.model.decoder.layers
    ]
    try:
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    finally:
        for hook in hooks:
            hook.remove()
    normalized = model.model.decoder.layernorm(torch.stack(layer_outputs))  # [L, B, N, d]
    logits = model.class_labels_classifier(normalized)
    boxes = model.bbox_predictor(normalized).sigmoid()
    return outputs.logits, outputs.pred_boxes, logits, boxes


def assert_parity(ours: HfDetrForObjectDetection, reference: DetrForObjectDetection, sizes):
    pixel_values, pixel_mask = padded_batch(sizes)
    ref_logits, ref_boxes, ref_layer_logits, ref_layer_boxes = reference_outputs(
        reference, pixel_values, pixel_mask
    )
    # the official-equivalent path reproduces transformers' own final predictions
    assert max_abs_diff(ref_layer_logits[-1], ref_logits) <= 1e-5
    ours.config.auxiliary_loss = True  # a training setting: predictions do not depend on it
    with torch.no_grad():
        outputs = ours(pixel_values=pixel_values, pixel_mask=pixel_mask, output_auxiliary_outputs=True)
    assert max_abs_diff(outputs.logits, ref_logits) <= TOLERANCE, "logits differ by more than 1e-4"
    assert max_abs_diff(outputs.pred_boxes, ref_boxes) <= TOLERANCE, "boxes differ by more than 1e-4"
    assert len(outputs.auxiliary_outputs) == reference.config.decoder_layers - 1
    for index, auxiliary in enumerate(outputs.auxiliary_outputs):
        assert max_abs_diff(auxiliary["logits"], ref_layer_logits[index]) <= TOLERANCE, f"aux logits {index}"
        assert max_abs_diff(auxiliary["pred_boxes"], ref_layer_boxes[index]) <= TOLERANCE, (
            f"aux boxes {index}"
        )


def convert_transformers(reference: DetrForObjectDetection, tmp_path) -> HfDetrForObjectDetection:
    source, target = tmp_path / "transformers", tmp_path / "hf_detr"
    reference.save_pretrained(source)
    assert (
        convert_main(["--source", "transformers", "--checkpoint", str(source), "--output-dir", str(target)])
        == 0
    )
    return HfDetrForObjectDetection.from_pretrained(target).eval()


def random_reference(config: DetrConfig) -> DetrForObjectDetection:
    return randomize_for_parity(DetrForObjectDetection(config)).eval()


TWO_SIZES = [(96, 128), (128, 80)]


def test_tiny_transformers_checkpoint_parity_1e4(tmp_path):
    reference = random_reference(_tiny_transformers_config())
    ours = convert_transformers(reference, tmp_path)
    assert ours.config.num_labels == 7
    assert ours.config.backbone == "resnet18"
    assert_parity(ours, reference, TWO_SIZES)


def test_default_labels_transformers_checkpoint_converts_with_its_label_names_parity_1e4(tmp_path):
    """A default `DetrConfig()`'s checkpoint: transformers v5 writes no id2label for default labels (as
    here, where it is removed by hand: whether it is written depends on the config's history) and names
    the classes LABEL_i on load."""
    reference = random_reference(_tiny_transformers_config(num_labels=None))
    source = tmp_path / "transformers"
    reference.save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    config.pop("id2label", None), config.pop("label2id", None)
    (source / "config.json").write_text(json.dumps(config))
    reloaded = DetrForObjectDetection.from_pretrained(source)
    assert reloaded.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert (
        convert_main(
            ["--source", "transformers", "--checkpoint", str(source), "--output-dir", str(tmp_path / "o")]
        )
        == 0
    )
    ours = HfDetrForObjectDetection.from_pretrained(tmp_path / "o").eval()
    assert ours.config.id2label == reloaded.config.id2label
    assert_parity(ours, reference, TWO_SIZES)


def test_dc5_transformers_checkpoint_parity_1e4(tmp_path):
    reference = random_reference(_tiny_transformers_config(dilation=True))
    ours = convert_transformers(reference, tmp_path)
    assert ours.config.dilation
    assert_parity(ours, reference, TWO_SIZES)


def test_learned_position_embedding_parity_1e4(tmp_path):
    reference = random_reference(_tiny_transformers_config(position_embedding_type="learned"))
    ours = convert_transformers(reference, tmp_path)
    assert ours.config.position_embedding_type == "learned"
    assert_parity(ours, reference, TWO_SIZES)


def test_transformers_resnet_backbone_checkpoint_parity_1e4(tmp_path):
    """Checkpoints with transformers' own ResNet (`use_timm_backbone=False`) map to timm names."""
    resnet18 = ResNetConfig(
        depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], out_features=["stage4"]
    )
    config = _tiny_transformers_config(use_timm_backbone=False, backbone_config=resnet18)
    config.backbone_config = resnet18
    reference = random_reference(config)
    ours = convert_transformers(reference, tmp_path)
    assert ours.config.backbone == "resnet18"
    assert_parity(ours, reference, TWO_SIZES)


def test_full_r50_transformers_checkpoint_parity_1e4(tmp_path):
    """The default DETR-R50 (COCO, 91 labels, 6+6 layers, d 256) at <= 256 px."""
    reference = random_reference(DetrConfig(num_labels=91))
    ours = convert_transformers(reference, tmp_path)
    assert ours.config.backbone == "resnet50" and ours.config.encoder_layers == 6
    assert_parity(ours, reference, [(224, 256), (256, 192)])


# ---------------------------------------------------------------------------------------------------
# Official facebookresearch/detr checkpoints
# ---------------------------------------------------------------------------------------------------
def official_state_dict(reference: DetrForObjectDetection) -> dict[str, torch.Tensor]:
    """The reference weights under the official key names, spelled out (not taken from the converter)."""
    src = {k: v.clone() for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    # v5 names modules in memory: out projections are `o_proj`, FFNs `mlp.fc1` / `mlp.fc2`
    official: dict[str, torch.Tensor] = {}
    backbone_prefix = "model.backbone.model."
    for key, value in src.items():
        if key.startswith(backbone_prefix):
            official["backbone.0.body." + key[len(backbone_prefix) :]] = value
    if "model.position_embedding.row_embeddings.weight" in src:
        official["backbone.1.row_embed.weight"] = src["model.position_embedding.row_embeddings.weight"]
        official["backbone.1.col_embed.weight"] = src["model.position_embedding.column_embeddings.weight"]
    official["input_proj.weight"] = src["model.input_projection.weight"]
    official["input_proj.bias"] = src["model.input_projection.bias"]
    official["query_embed.weight"] = src["model.query_position_embeddings.weight"]
    official["class_embed.weight"] = src["class_labels_classifier.weight"]
    official["class_embed.bias"] = src["class_labels_classifier.bias"]
    for i in range(3):
        for kind in ("weight", "bias"):
            official[f"bbox_embed.layers.{i}.{kind}"] = src[f"bbox_predictor.layers.{i}.{kind}"]

    def attention(official_prefix: str, ours_prefix: str) -> None:
        for kind in ("weight", "bias"):
            official[f"{official_prefix}.in_proj_{kind}"] = torch.cat(
                [src[f"{ours_prefix}.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            official[f"{official_prefix}.out_proj.{kind}"] = src[f"{ours_prefix}.o_proj.{kind}"]

    def copy(official_name: str, ours_name: str) -> None:
        for kind in ("weight", "bias"):
            official[f"{official_name}.{kind}"] = src[f"{ours_name}.{kind}"]

    for i in range(reference.config.encoder_layers):
        o, t = f"transformer.encoder.layers.{i}", f"model.encoder.layers.{i}"
        attention(f"{o}.self_attn", f"{t}.self_attn")
        copy(f"{o}.linear1", f"{t}.mlp.fc1")
        copy(f"{o}.linear2", f"{t}.mlp.fc2")
        copy(f"{o}.norm1", f"{t}.self_attn_layer_norm")
        copy(f"{o}.norm2", f"{t}.final_layer_norm")
    for i in range(reference.config.decoder_layers):
        o, t = f"transformer.decoder.layers.{i}", f"model.decoder.layers.{i}"
        attention(f"{o}.self_attn", f"{t}.self_attn")
        attention(f"{o}.multihead_attn", f"{t}.encoder_attn")
        copy(f"{o}.linear1", f"{t}.mlp.fc1")
        copy(f"{o}.linear2", f"{t}.mlp.fc2")
        copy(f"{o}.norm1", f"{t}.self_attn_layer_norm")
        copy(f"{o}.norm2", f"{t}.encoder_attn_layer_norm")
        copy(f"{o}.norm3", f"{t}.final_layer_norm")
    copy("transformer.decoder.norm", "model.decoder.layernorm")
    assert len(official) > 0
    return official


def write_official_checkpoint(reference: DetrForObjectDetection, path, **args) -> None:
    namespace = argparse.Namespace(
        backbone=reference.config.backbone_config.backbone,
        dilation=bool(reference.config.dilation),
        nheads=reference.config.encoder_attention_heads,
        position_embedding=reference.config.position_embedding_type,
        aux_loss=True,
        **args,
    )
    torch.save({"model": official_state_dict(reference), "args": namespace, "epoch": 499}, path)


@pytest.mark.parametrize("position_embedding_type", ["sine", "learned"])
def test_official_checkpoint_parity_1e4(tmp_path, position_embedding_type):
    reference = random_reference(_tiny_transformers_config(position_embedding_type=position_embedding_type))
    checkpoint = tmp_path / "detr-official.pth"
    write_official_checkpoint(reference, checkpoint)
    target = tmp_path / "converted"
    assert (
        convert_main(["--source", "original", "--checkpoint", str(checkpoint), "--output-dir", str(target)])
        == 0
    )
    ours = HfDetrForObjectDetection.from_pretrained(target).eval()
    assert ours.config.position_embedding_type == position_embedding_type
    assert ours.config.num_labels == 7
    assert_parity(ours, reference, TWO_SIZES)


def test_official_dc5_checkpoint_via_command_line_parity_1e4(tmp_path):
    """The script entry point, in its own process, on a DC5 checkpoint (flags --backbone --dilation)."""
    reference = random_reference(_tiny_transformers_config(dilation=True, num_labels=91))
    checkpoint = tmp_path / "detr-dc5.pth"
    write_official_checkpoint(reference, checkpoint)
    target = tmp_path / "converted"
    command = [
        sys.executable, "scripts/convert_checkpoint.py", "--source", "original", "--checkpoint",
        str(checkpoint), "--output-dir", str(target), "--backbone", "resnet18", "--dilation", "--num-labels", "91",
    ]  # fmt: skip
    from conftest import REPO_ROOT

    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (target / "model.safetensors").is_file()
    ours = HfDetrForObjectDetection.from_pretrained(target).eval()
    assert ours.config.dilation and ours.config.id2label[1] == "person" and ours.config.id2label[12] == "N/A"
    assert_parity(ours, reference, TWO_SIZES)


# ---------------------------------------------------------------------------------------------------
# Segmentation (panoptic) checkpoints: transformers' DetrForSegmentation and official DETRsegm releases
# ---------------------------------------------------------------------------------------------------
# d_model 128 with 8 heads: the smallest width whose mask head has the official 8 GroupNorm groups
TINY_SEGMENTATION = {
    **TINY_TRANSFORMER,
    "d_model": 128,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
}


def random_segmentation_reference(**overrides) -> DetrForSegmentation:
    kwargs = dict(backbone="resnet18", num_labels=7, auxiliary_loss=False, **TINY_SEGMENTATION)
    kwargs.update(overrides)
    return randomize_for_parity(DetrForSegmentation(DetrConfig(**kwargs))).eval()


def assert_segmentation_parity(ours: HfDetrForSegmentation, reference: DetrForSegmentation, sizes) -> None:
    pixel_values, pixel_mask = padded_batch(sizes)
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, pixel_mask=pixel_mask)
        outputs = ours(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert outputs.pred_masks.shape == expected.pred_masks.shape
    for name in ("logits", "pred_boxes", "pred_masks"):
        difference = max_abs_diff(getattr(outputs, name), getattr(expected, name))
        assert difference <= TOLERANCE, f"{name} differ by {difference:.2e}, more than 1e-4"
    assert_parity(ours.detr, reference.detr, sizes)  # the detector alone, auxiliary layers included


def test_transformers_segmentation_checkpoint_parity_1e4(tmp_path):
    reference = random_segmentation_reference()
    source, target = tmp_path / "transformers", tmp_path / "hf_detr"
    reference.save_pretrained(source)
    arguments = ["--source", "transformers", "--checkpoint", str(source), "--output-dir", str(target)]
    assert convert_main(arguments) == 0
    ours = HfDetrForSegmentation.from_pretrained(target).eval()
    assert ours.config.use_masks and ours.config.num_labels == 7
    assert HfDetrImageProcessor.from_pretrained(target).format == "coco_panoptic"
    assert_segmentation_parity(ours, reference, TWO_SIZES)


def official_panoptic_state_dict(reference: DetrForSegmentation, path) -> dict[str, torch.Tensor]:
    """The reference under the official DETRsegm names: the detector's spelled out by
    `official_state_dict`, the heads as transformers writes them to disk (the official names)."""
    reference.save_pretrained(path)
    heads = {k: v for k, v in load_file(path / "model.safetensors").items() if not k.startswith("detr.")}
    assert any(k.startswith("bbox_attention.q_linear") for k in heads) and "mask_head.out_lay.weight" in heads
    return {**{f"detr.{k}": v for k, v in official_state_dict(reference.detr).items()}, **heads}


@pytest.mark.parametrize("dilation", [False, True], ids=["R18", "R18-DC5"])
def test_official_panoptic_checkpoint_with_250_classes_parity_1e4(tmp_path, dilation):
    """The official panoptic releases predict 250 classes; DC5 dilates layer4 only, so the mask head's
    FPN still takes layer3, layer2, layer1 (strides 16, 8, 4)."""
    reference = random_segmentation_reference(num_labels=250, dilation=dilation)
    checkpoint = tmp_path / "detr-panoptic.pth"
    namespace = argparse.Namespace(
        backbone="resnet18", dilation=dilation, nheads=8, aux_loss=True, masks=True,
        dataset_file="coco_panoptic", mask_loss_coef=1.0, dice_loss_coef=1.0,
    )  # fmt: skip
    model = official_panoptic_state_dict(reference, tmp_path / "transformers")
    torch.save({"model": model, "args": namespace, "epoch": 324}, checkpoint)
    target = tmp_path / "converted"
    arguments = ["--source", "original", "--checkpoint", str(checkpoint), "--output-dir", str(target)]
    assert convert_main(arguments) == 0
    ours = HfDetrForSegmentation.from_pretrained(target).eval()
    assert ours.config.num_labels == 250 and ours.config.dilation == dilation
    assert_segmentation_parity(ours, reference, TWO_SIZES)


# --------------------------------------------------------------------------------------------------
# Output structure: the same fields, order and tuples as transformers' DETR
# --------------------------------------------------------------------------------------------------
OUTPUT_FLAGS = [{}, {"output_attentions": True}, {"output_attentions": True, "output_hidden_states": True}]


def _structure(value):
    """Shapes in place of tensors, recursively (tuples, lists and dicts keep their layout)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return [_structure(item) for item in value]
    if isinstance(value, dict):  # loss_dict: hf_detr also logs the official class_error
        return {key: _structure(item) for key, item in value.items() if key != "class_error"}
    return value


def assert_same_outputs(ours, reference, auxiliary_loss: bool, **inputs) -> None:
    """Per flag set: the same field names in the same order, and `return_dict=False` tuples of the same
    length and shapes; without auxiliary loss (transformers' official-equivalent path), equal values."""
    for flags in OUTPUT_FLAGS:
        with torch.no_grad():
            expected, got = reference(**inputs, **flags), ours(**inputs, **flags)
            expected_tuple = reference(**inputs, **flags, return_dict=False)
            got_tuple = ours(**inputs, **flags, return_dict=False)
        assert list(got.keys()) == list(expected.keys()), flags
        assert _structure(got_tuple) == _structure(expected_tuple), flags
        if not auxiliary_loss:
            for index, value in enumerate(expected_tuple):
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    assert max_abs_diff(got_tuple[index], value) <= TOLERANCE, (flags, index)


@pytest.mark.parametrize("auxiliary_loss", [False, True], ids=["plain", "auxiliary-loss"])
def test_outputs_have_transformers_fields_order_and_tuples(tmp_path, auxiliary_loss):
    reference = random_reference(_tiny_transformers_config(auxiliary_loss=auxiliary_loss))
    ours = convert_transformers(reference, tmp_path)
    reference.set_attn_implementation("eager")  # its SDPA path returns no attention weights
    ours.config.auxiliary_loss = auxiliary_loss
    pixel_values, pixel_mask = padded_batch(TWO_SIZES)
    inputs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
    assert_same_outputs(ours.model, reference.model, auxiliary_loss, **inputs)
    assert_same_outputs(ours, reference, auxiliary_loss, **inputs)
    labels = [
        {"class_labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
        {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.5, 0.5, 0.5]])},
    ]
    assert_same_outputs(ours, reference, auxiliary_loss, labels=labels, **inputs)


def test_segmentation_outputs_have_transformers_fields_order_and_tuples(tmp_path):
    reference = random_segmentation_reference()
    reference.save_pretrained(tmp_path / "transformers")
    arguments = ["--source", "transformers", "--checkpoint", str(tmp_path / "transformers")]
    assert convert_main([*arguments, "--output-dir", str(tmp_path / "hf_detr")]) == 0
    ours = HfDetrForSegmentation.from_pretrained(tmp_path / "hf_detr").eval()
    reference.set_attn_implementation("eager")
    pixel_values, pixel_mask = padded_batch(TWO_SIZES)
    assert_same_outputs(ours, reference, False, pixel_values=pixel_values, pixel_mask=pixel_mask)
