"""The backbone convolution whose CPU weight gradient is one GEMM over channels-last patches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detr_testing import padded_batch, tiny_hf_detr_config
from torch import nn

from hf_detr import HfDetrForObjectDetection
from hf_detr.convolution_detr import MIN_OUT_CHANNELS, HfDetrConv2d, conv2d_weight_grad

# (kernel, stride, padding, dilation): ResNet's 7x7 stem, 3x3 and 1x1 convolutions, DC5's dilated 3x3
CONVOLUTIONS = [
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (1, 1, 0, 1),
    (1, 2, 0, 1),
    (7, 2, 3, 1),
    (3, 1, 2, 2),
    (3, 2, 0, 1),
]


# each convolution with each method that applies to it (row strips need a vertical stride of 1)
METHOD_CASES = [(*c, "im2col") for c in CONVOLUTIONS] + [
    (*c, "row_strips") for c in CONVOLUTIONS if c[1] == 1
]


@pytest.mark.parametrize("kernel, stride, padding, dilation, method", METHOD_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("max_patch_elements", [1 << 25, 1])  # one GEMM, or one image at a time
def test_weight_grad_equals_autograd_in_float64_1e10(
    kernel, stride, padding, dilation, method, channels_last, max_patch_elements
):
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 5, 11, 14, dtype=torch.float64, generator=generator).contiguous(
        memory_format=memory_format
    )
    weight = torch.randn(4, 5, kernel, kernel, dtype=torch.float64, generator=generator, requires_grad=True)
    y = F.conv2d(x, weight, None, stride, padding, dilation)
    grad_output = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    (expected,) = torch.autograd.grad(y, weight, grad_output)
    got = conv2d_weight_grad(
        grad_output,
        x,
        (kernel, kernel),
        (stride, stride),
        (padding, padding),
        (dilation, dilation),
        max_patch_elements,
        method,
    )
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_row_strips_are_chosen_for_tall_stride_1_maps_only(monkeypatch):
    import hf_detr.convolution_detr as convolution

    chosen = []
    real = convolution._row_strips_products
    monkeypatch.setattr(convolution, "_row_strips_products", lambda *a: chosen.append(1) or real(*a))
    for height, stride, expected in [(32, 1, 1), (31, 1, 0), (64, 2, 0)]:
        chosen.clear()
        x = torch.randn(1, 4, height, 8)
        grad_output = torch.randn(F.conv2d(x, torch.zeros(6, 4, 3, 3), None, stride, 1).shape)
        conv2d_weight_grad(grad_output, x, (3, 3), (stride, stride), (1, 1), (1, 1))
        assert len(chosen) == expected, (height, stride)
    with pytest.raises(ValueError, match="vertical stride of 1"):
        conv2d_weight_grad(grad_output, x, (3, 3), (2, 2), (1, 1), (1, 1), method="row_strips")
    with pytest.raises(ValueError, match="method must be"):
        conv2d_weight_grad(grad_output, x, (3, 3), (2, 2), (1, 1), (1, 1), method="winograd")


@pytest.mark.parametrize("kernel, stride, padding, dilation", CONVOLUTIONS)
def test_training_conv_gives_nn_conv2d_gradients_in_float32_1e5(kernel, stride, padding, dilation):
    torch.manual_seed(0)
    reference = nn.Conv2d(6, 128, kernel, stride, padding, dilation, bias=True)
    conv = HfDetrConv2d(6, 128, kernel, stride, padding, dilation, bias=True)
    conv.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 17, 13).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    y_ref = reference(x)
    if (kernel, stride, padding, dilation) == (3, 1, 1, 1):
        assert type(y.grad_fn).__name__ == "Conv2dWinogradBackward"
        torch.testing.assert_close(y / y_ref.abs().max(), y_ref / y_ref.abs().max(), rtol=0, atol=1e-5)
    else:
        assert type(y.grad_fn).__name__ == "_Conv2dGemmWeightGradBackward"  # it took the GEMM path
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the forward pass is nn.Conv2d's own
    grad_output = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, conv.weight, conv.bias), grad_output)
    expected = torch.autograd.grad(y_ref, (x, reference.weight, reference.bias), grad_output)
    for name, g, e in zip(("input", "weight", "bias"), got, expected):
        scale = e.abs().max()  # float32 sums of ~400 products: compare relative to the largest entry
        torch.testing.assert_close(g / scale, e / scale, rtol=0, atol=1e-5, msg=f"{name} gradient")


def test_gemm_path_only_where_a_weight_trains_on_cpu_in_full_precision():
    conv = HfDetrConv2d(3, MIN_OUT_CHANNELS, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 8, 8)
    assert type(conv(x).grad_fn).__name__ == "_Conv2dGemmWeightGradBackward"
    narrow = HfDetrConv2d(3, MIN_OUT_CHANNELS // 2, 3, padding=2, dilation=2)  # oneDNN beats im2col there
    assert type(narrow(x).grad_fn).__name__ == "ConvolutionBackward0"
    tall = torch.randn(1, 3, 64, 8)  # but not row strips
    assert type(narrow(tall).grad_fn).__name__ == "_Conv2dGemmWeightGradBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(False)
    assert type(conv(x.requires_grad_()).grad_fn).__name__ == "ConvolutionBackward0"  # a frozen stage


def test_winograd_path_for_trainable_3x3_stride_1_convolutions_only():
    x = torch.randn(1, 3, 8, 8)
    winograd = HfDetrConv2d(3, MIN_OUT_CHANNELS, 3, padding=1)
    assert type(winograd(x).grad_fn).__name__ == "Conv2dWinogradBackward"
    for other in [
        HfDetrConv2d(3, MIN_OUT_CHANNELS, 3, stride=2, padding=1),
        HfDetrConv2d(3, MIN_OUT_CHANNELS, 3, padding=2, dilation=2),
        HfDetrConv2d(3, MIN_OUT_CHANNELS, 3, padding=0),
        HfDetrConv2d(3, MIN_OUT_CHANNELS, 1),
    ]:
        assert type(other(x).grad_fn).__name__ == "_Conv2dGemmWeightGradBackward", other
    narrow = HfDetrConv2d(3, MIN_OUT_CHANNELS // 2, 3, padding=1)  # where oneDNN is kept (see above)
    assert type(narrow(x).grad_fn).__name__ == "ConvolutionBackward0"
    assert type(narrow(torch.randn(1, 3, 32, 8)).grad_fn).__name__ == "Conv2dWinogradBackward"
    with torch.no_grad():
        assert winograd(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(winograd(x).grad_fn).__name__ == "ConvolutionBackward0"


@pytest.mark.parametrize("freeze_backbone_batch_norm", [True, False])
def test_model_gradients_match_the_native_convolution_path(freeze_backbone_batch_norm, monkeypatch):
    """The whole detector, DC5 (dilated layer4) included: every parameter's gradient as with nn.Conv2d,
    to 1e-10 in float64. With frozen BatchNorm, float32 gradients no further from the float64 truth
    than nn.Conv2d's own float32 gradients, give or take 10% and 3e-5 of each parameter's largest
    gradient (theirs: up to 1.3e-5). With batch statistics over layer4's 6 x 6 maps, float32 rounding
    grows to several % in both paths, so only float64 is compared."""
    config = tiny_hf_detr_config(
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        dilation=True,
        freeze_backbone_batch_norm=freeze_backbone_batch_norm,
        auxiliary_loss=True,
    )
    torch.manual_seed(0)
    model = HfDetrForObjectDetection(config).train()
    body = model.model.backbone.body
    trainable_convs = [
        m for n, m in body.named_modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad
    ]
    assert trainable_convs and all(isinstance(m, HfDetrConv2d) for m in trainable_convs)
    assert any(m.out_channels >= MIN_OUT_CHANNELS for m in trainable_convs)

    pixel_values, pixel_mask = padded_batch([(96, 96), (96, 64)])
    labels = [
        {
            "class_labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]]),
        },
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.4, 0.5, 0.5]])},
    ]

    def gradients(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        model.to(dtype).zero_grad()
        targets = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()} for t in labels]
        loss = model(pixel_values=pixel_values.to(dtype), pixel_mask=pixel_mask, labels=targets).loss
        loss.backward()
        # copies: .to(dtype) converts .grad tensors in place
        return {
            n: p.grad.to(torch.float64, copy=True) for n, p in model.named_parameters() if p.grad is not None
        }

    got32 = gradients(torch.float32)  # first: float32 weights go to float64 and back exactly
    got64 = gradients(torch.float64)
    monkeypatch.setattr(HfDetrConv2d, "_conv_forward", nn.Conv2d._conv_forward)
    native32, truth = gradients(torch.float32), gradients(torch.float64)
    assert got64.keys() == got32.keys() == native32.keys() == truth.keys()
    for name in truth:
        if name.endswith("k_proj.bias"):
            # exactly 0 (softmax ignores a constant added to every key's score): rounding noise only
            assert got32[name].abs().max() < 1e-6 and truth[name].abs().max() < 1e-12, name
            continue
        scale = truth[name].abs().max().clamp_min(1e-6)
        torch.testing.assert_close(got64[name] / scale, truth[name] / scale, rtol=0, atol=1e-10, msg=name)
        if freeze_backbone_batch_norm:  # batch statistics over 6 x 6 maps make float32 chaotic in both
            native_error = ((native32[name] - truth[name]).abs().max() / scale).item()
            error = ((got32[name] - truth[name]).abs().max() / scale).item()
            assert error <= 1.1 * native_error + 3e-5, (name, error, native_error)
