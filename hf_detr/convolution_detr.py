"""The backbone's trainable convolutions, with a faster weight gradient on CPU.

On CPU, oneDNN computes a convolution's weight gradient at a third to two thirds of the speed of
its forward pass (e.g. 15 ms against 10 ms forward for a ResNet-18 layer2 3x3 convolution on
2 x 48 x 48 channels-last activations; 89 ms for ResNet-50's first layer2 3x3 convolution at 512 px,
where the product below takes 39 ms). The same sum is one matrix product over the input's patches:

    dL/dW[o, i, kh, kw] = sum_{b, y, x} dL/dY[b, o, y, x] * X_padded[b, i, y*s + kh*d, x*s + kw*d]

i.e. `grad_output^T [C_out, B*H'*W'] @ patches [B*H'*W', kh*kw*C_in]`, where `patches` is a
channels-last im2col: one strided copy of the padded input. Its product comes out in the layout of
a channels-last weight ([C_out, kh, kw, C_in]) and runs at the GEMM library's full speed. For
stride-1 convolutions on tall maps the copy is kh times smaller: kh products over "row strips" (the
kw windows of each padded row, see `_row_strips_products`). The input gradient and the forward pass
stay with oneDNN (`aten.convolution_backward` for the former), so only the summation order of the
weight gradient changes (relative differences ~1e-6 in float32).

ResNet's 3x3 stride-1 convolutions (padding 1, undilated: most of a ResNet-18's arithmetic) take
Winograd F(2x2, 3x3) for the forward pass and both gradients instead (`winograd_detr.py`): 2.25x
fewer products, 1.3-1.7x faster per convolution than the path above at 128-512 channels.

Part of the self-contained "model files" (see `modeling_detr.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .winograd_detr import Conv2dWinograd

# Fewest output channels for the GEMM path where it would copy a full im2col: that copy costs about
# 1/C_out of the product, and for ResNet's 64-channel layer1 convolutions (batch 16 at 32 x 32) it made
# the weight gradient slower than oneDNN's (29 vs 18 ms); from 128 channels up every ResNet-18/50
# convolution measured faster. Row strips (below) are taken at any width.
MIN_OUT_CHANNELS = 128
# Largest patch buffer built at once, in elements (128 MiB of float32); larger inputs are taken a
# few images at a time and their products accumulated.
MAX_PATCH_ELEMENTS = 1 << 25
# Row strips (below) pay for (kh - 1) * dilation zero rows of grad_output per image; they are taken
# when those are at most 1/16 of its H' rows (ResNet 3x3: H' >= 32). Measured inside ResNet-18
# training steps: 10.8 instead of 13.4 ms at 2 x 48 x 48 x 128, even at 24 x 24, slower at 12 x 12
# and below (36% at 16 x 4 x 4).
MIN_ROWS_PER_PADDING_ROW = 16


class _Window(NamedTuple):
    """Where a convolution's window reads the padded input, each (height, width)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]


def uses_row_strips(
    out_height: int, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> bool:
    """Whether [`conv2d_weight_grad`] takes row strips: a stride-1 kernel taller than one row, on an
    output at least `MIN_ROWS_PER_PADDING_ROW` times taller than the zero rows that strips add."""
    padding_rows = (kernel_size[0] - 1) * dilation[0]
    return padding_rows > 0 and stride[0] == 1 and out_height >= MIN_ROWS_PER_PADDING_ROW * padding_rows


def conv2d_weight_grad(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    max_patch_elements: int = MAX_PATCH_ELEMENTS,
    method: str | None = None,
) -> torch.Tensor:
    """The gradient of a `groups=1`, zero-padded conv2d's weight, as GEMMs over channels-last patches.

    grad_output: [B, C_out, H', W']; input: [B, C_in, H, W]. Returns [C_out, C_in, kh, kw] with
    channels-last strides (the layout of a channels-last weight). `method` is "im2col" or
    "row_strips" (stride-1 rows only); by default the faster one for these shapes.
    """
    kh, sh = kernel_size[0], stride[0]
    if method is None:
        method = (
            "row_strips" if uses_row_strips(grad_output.shape[2], kernel_size, stride, dilation) else "im2col"
        )
    if method not in ("im2col", "row_strips"):
        raise ValueError(f"method must be 'im2col', 'row_strips' or None, got {method!r}")
    if method == "row_strips" and sh != 1:
        raise ValueError(f"row strips need a vertical stride of 1, got {sh}")
    padded = input.permute(0, 2, 3, 1)  # [B, H, W, C_in]: a view of a channels-last input
    if padding[0] or padding[1]:
        padded = F.pad(padded, (0, 0, padding[1], padding[1], padding[0], padding[0]))  # [B, Hp, Wp, C_in]
    padded = padded.contiguous()
    grad_rows = grad_output.permute(0, 2, 3, 1)  # [B, H', W', C_out]
    weight_grad = grad_output.new_empty(grad_output.shape[1], kh, kernel_size[1] * input.shape[1])
    products = _row_strips_products if method == "row_strips" else _im2col_products
    window = _Window(kernel_size, stride, dilation)
    # im2col elements per image (row strips need kh times fewer)
    batch, patch_elements = input.shape[0], grad_output[0, 0].numel() * weight_grad[0].numel()
    images_per_chunk = max(1, max_patch_elements // patch_elements)
    for start in range(0, batch, images_per_chunk):
        chunk = slice(start, start + images_per_chunk)
        for rows, patches, out in products(grad_rows[chunk], padded[chunk], weight_grad, window):
            out.addmm_(rows.t(), patches, beta=0 if start == 0 else 1)
    return weight_grad.view(-1, kh, kernel_size[1], input.shape[1]).permute(0, 3, 1, 2)


def _im2col_products(
    grad_rows: torch.Tensor, padded: torch.Tensor, weight_grad: torch.Tensor, window: _Window
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One product over a full channels-last im2col copy of the padded input:
    grad_output^T [C_out, b*H'*W'] @ patches [b*H'*W', kh*kw*C_in]."""
    batch, out_height, out_width, out_channels = grad_rows.shape
    padded_height, padded_width, in_channels = padded.shape[1:]
    (kh, kw), (sh, sw), (dh, dw) = window
    row, pixel = padded_width * in_channels, in_channels  # strides of one padded row and pixel
    windows = padded.as_strided(  # [b, H', W', kh, kw, C_in], a view of the padded input
        (batch, out_height, out_width, kh, kw, in_channels),
        (padded_height * row, sh * row, sw * pixel, dh * row, dw * pixel, 1),
    )
    patches = windows.reshape(-1, kh * kw * in_channels)  # a copy, except for 1x1 stride-1 convolutions
    yield grad_rows.reshape(-1, out_channels), patches, weight_grad.view(out_channels, -1)


def _row_strips_products(
    grad_rows: torch.Tensor, padded: torch.Tensor, weight_grad: torch.Tensor, window: _Window
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """kh products over a copy that is kh times smaller than im2col (stride-1 rows only).

    strips[b, y, x] holds the kw windows of padded row y at output column x ([kw*C_in] numbers);
    output row y' reads strips of rows y' + i*dh for i < kh. With grad_output padded to the strips'
    height with zero rows, row y' of image b and its input row are a fixed distance apart in the
    flattened strips, so each i is one product over contiguous rows:
    grad^T [C_out, R] @ strips[i*dh*W' : i*dh*W' + R] [R, kw*C_in] -> weight_grad[:, i].
    """
    batch, out_height, out_width, out_channels = grad_rows.shape
    padded_height, padded_width, in_channels = padded.shape[1:]
    (kh, kw), (_, sw), (dh, dw) = window
    row, pixel = padded_width * in_channels, in_channels
    strips = padded.as_strided(  # [b, Hp, W', kw, C_in], a view of the padded input
        (batch, padded_height, out_width, kw, in_channels),
        (padded_height * row, row, sw * pixel, dw * pixel, 1),
    ).reshape(-1, kw * in_channels)  # a copy: [b*Hp*W', kw*C_in]
    grad_rows = F.pad(grad_rows, (0, 0, 0, 0, 0, padded_height - out_height))  # [b, Hp, W', C_out]
    grad_rows = grad_rows.reshape(-1, out_channels)
    used_rows = grad_rows.shape[0] - (kh - 1) * dh * out_width  # the last image's zero rows are left out
    for i in range(kh):
        offset = i * dh * out_width
        yield grad_rows[:used_rows], strips[offset : offset + used_rows], weight_grad[:, i]


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
    """`nn.Conv2d` (same parameters and keys) whose weight gradient is a GEMM when it trains on CPU,
    and whose 3x3 stride-1 form trains by Winograd F(2x2, 3x3) ([`Conv2dWinograd`]).

    It takes these paths only where they were measured faster and as accurate: float32/float64 on
    CPU, outside autocast, `groups=1`, zero padding given as numbers, a weight that needs a gradient,
    and at least `MIN_OUT_CHANNELS` output channels or a weight gradient that takes row strips (which
    beat oneDNN's for ResNet's 64-channel 3x3 convolutions too: 15 vs 42 ms at 2 x 96 x 96, 16 vs 17
    at 16 x 32 x 32).
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
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and (
                self.out_channels >= MIN_OUT_CHANNELS
                or uses_row_strips(self.output_size(input)[0], self.kernel_size, self.stride, self.dilation)
            )
        ):
            if self.is_winograd_shape():
                return Conv2dWinograd.apply(input, weight, bias)
            return _Conv2dGemmWeightGrad.apply(input, weight, bias, self.stride, self.padding, self.dilation)
        return super()._conv_forward(input, weight, bias)

    def is_winograd_shape(self) -> bool:
        """Whether this is a 3x3, stride-1, padding-1, undilated convolution: [`Conv2dWinograd`]'s
        shape (1.3-1.7x faster forward and backward than oneDNN's forward and input gradient with the
        GEMM weight gradient, at 128-512 channels; `benchmarks/RESULTS.md`)."""
        return (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
        )

    def output_size(self, input: torch.Tensor) -> tuple[int, int]:
        """(H', W') of this convolution's output for `input` [B, C_in, H, W] (numeric padding)."""
        height, width = (
            (length + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for length, pad, dilation, kernel, stride in zip(
                input.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride
            )
        )
        return height, width


def use_gemm_weight_grad(module: nn.Module) -> None:
    """Turn every plain `nn.Conv2d` under `module` into [`HfDetrConv2d`] in place.
    Parameters, buffers and checkpoint keys are unchanged."""
    for submodule in module.modules():
        if type(submodule) is nn.Conv2d:
            submodule.__class__ = HfDetrConv2d
