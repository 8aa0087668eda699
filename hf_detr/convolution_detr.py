"""The backbone's trainable convolutions, with a faster weight gradient on CPU.

On CPU, oneDNN computes a convolution's weight gradient at a third to two thirds of the speed of
its forward pass (e.g. 15 ms against 10 ms forward for a ResNet-18 layer2 3x3 convolution on
2 x 48 x 48 channels-last activations; 89 ms for ResNet-50's first layer2 3x3 convolution at 512 px,
where the product below takes 39 ms). The same sum is one matrix product over the input's patches:

    dL/dW[o, i, kh, kw] = sum_{b, y, x} dL/dY[b, o, y, x] * X_padded[b, i, y*s + kh*d, x*s + kw*d]

i.e. `grad_output^T [C_out, B*H'*W'] @ patches [B*H'*W', kh*kw*C_in]`, where `patches` is a
channels-last im2col: one strided copy of the padded input. Its product comes out in the layout of
a channels-last weight ([C_out, kh, kw, C_in]) and runs at the GEMM library's full speed. The input
gradient and the forward pass stay with oneDNN (`aten.convolution_backward` for the former), so only
the summation order of the weight gradient changes (relative differences ~1e-6 in float32).

Part of the self-contained "model files" (see `modeling_detr.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Fewest output channels for the GEMM path: the im2col copy costs about 1/C_out of the product, and
# for ResNet's 64-channel layer1 convolutions (batch 16 at 32 x 32) it made the weight gradient slower
# than oneDNN's (29 vs 18 ms); from 128 channels up every ResNet-18/50 convolution measured faster.
MIN_OUT_CHANNELS = 128
# Largest im2col buffer built at once, in elements (128 MiB of float32); larger inputs are taken a
# few images at a time and their products accumulated.
MAX_PATCH_ELEMENTS = 1 << 25


def conv2d_weight_grad(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    max_patch_elements: int = MAX_PATCH_ELEMENTS,
) -> torch.Tensor:
    """The gradient of a `groups=1`, zero-padded conv2d's weight, as one GEMM per chunk of images.

    grad_output: [B, C_out, H', W']; input: [B, C_in, H, W]. Returns [C_out, C_in, kh, kw] with
    channels-last strides (the layout of a channels-last weight).
    """
    batch, in_channels = input.shape[:2]
    out_channels, out_height, out_width = grad_output.shape[1:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    padded = input.permute(0, 2, 3, 1)  # [B, H, W, C_in]: a view of a channels-last input
    if ph or pw:
        padded = F.pad(padded, (0, 0, pw, pw, ph, ph))  # [B, Hp, Wp, C_in]
    padded = padded.contiguous()
    padded_height, padded_width = padded.shape[1:3]
    grad_rows = grad_output.permute(0, 2, 3, 1).reshape(batch, out_height * out_width, out_channels)

    patch_size = kh * kw * in_channels
    images_per_chunk = max(1, max_patch_elements // (out_height * out_width * patch_size))
    row, pixel = padded_width * in_channels, in_channels  # strides of one padded row and pixel
    weight_grad = None  # [C_out, kh*kw*C_in]
    for start in range(0, batch, images_per_chunk):
        chunk = padded[start : start + images_per_chunk]
        windows = chunk.as_strided(  # [b, H', W', kh, kw, C_in], a view of the padded input
            (chunk.shape[0], out_height, out_width, kh, kw, in_channels),
            (padded_height * row, sh * row, sw * pixel, dh * row, dw * pixel, 1),
        )
        patches = windows.reshape(-1, patch_size)  # a copy, except for 1x1 stride-1 convolutions
        rows = grad_rows[start : start + images_per_chunk].reshape(-1, out_channels)  # [b*H'*W', C_out]
        if weight_grad is None:
            weight_grad = rows.t() @ patches
        else:
            weight_grad.addmm_(rows.t(), patches)
    return weight_grad.view(out_channels, kh, kw, in_channels).permute(0, 3, 1, 2)


class _Conv2dGemmWeightGrad(torch.autograd.Function):
    """conv2d whose backward takes the input gradient from oneDNN and the weight gradient from
    [`conv2d_weight_grad`]."""

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(input, weight)
        ctx.conv_args = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return F.conv2d(input, weight, bias, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output,
                input,
                weight,
                None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = conv2d_weight_grad(grad_output, input, weight.shape[-2:], stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None


class HfDetrConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and keys) whose weight gradient is a GEMM when it trains on CPU.

    It takes that path only where it is measured faster and exact: float32/float64 on CPU, outside
    autocast, `groups=1`, at least `MIN_OUT_CHANNELS` output channels, zero padding given as numbers,
    and a weight that needs a gradient.
    Everything else (GPU, inference, frozen stages) runs `nn.Conv2d`'s own forward.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if (
            weight.requires_grad
            and torch.is_grad_enabled()
            and input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
            and self.groups == 1
            and self.out_channels >= MIN_OUT_CHANNELS
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            return _Conv2dGemmWeightGrad.apply(input, weight, bias, self.stride, self.padding, self.dilation)
        return super()._conv_forward(input, weight, bias)


def use_gemm_weight_grad(module: nn.Module) -> None:
    """Turn every plain `nn.Conv2d` under `module` into [`HfDetrConv2d`] in place.
    Parameters, buffers and checkpoint keys are unchanged."""
    for submodule in module.modules():
        if type(submodule) is nn.Conv2d:
            submodule.__class__ = HfDetrConv2d
