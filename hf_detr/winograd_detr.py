"""Winograd F(2x2, 3x3): the backbone's trainable 3x3 stride-1 convolutions in 2.25x fewer products.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Each 2x2 output tile
is computed from the 4x4 input tile around it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

where g is a 3x3 kernel, d the input tile and `*` is elementwise over the 16 positions; summed over
input channels, that is 16 matrix products [tiles, C_in] @ [C_in, C_out], 16 multiplications per
2x2 outputs where a direct convolution takes 36. The transforms are additions over channels-last
activations (the constants below), a few passes over memory.

The backward pass is the transpose of each step: the input gradient is B [dV] B^T of
dV = dM @ U^T, the weight gradient G^T [V^T @ dM] G, with dM = A dY A^T: again 16 products each.
On this project's 2-core CPU the products run at the GEMM library's speed, and a ResNet-18 layer3
convolution's forward and backward pass at 2 x 24 x 24 takes 2/3 of the time of oneDNN's forward
pass and input gradient with [`conv2d_weight_grad`]'s weight gradient (1.3-1.7x faster from 128 to
512 channels; `benchmarks/RESULTS.md`). In float32 the output differs from float64 truth by about
2e-6 of its largest entry (a direct convolution: 1e-6), in float64 by ~1e-15.

Part of the self-contained "model files" (see `modeling_detr.py`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# G: the kernel transform, 4 x 3 (the input and output transforms B^T and A^T are written out as
# additions in `_input_transform` and `_output_transform`).
_KERNEL_TRANSFORM = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


@functools.cache
def _kernel_transform_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """G (x) G: [16, 9], mapping a flattened 3x3 kernel to its 4x4 Winograd transform (built once
    per dtype and device; callers only read it)."""
    g = torch.tensor(_KERNEL_TRANSFORM, dtype=dtype, device=device)  # [4, 3]
    return torch.kron(g, g)  # [16, 9]


def kernel_transform(weight: torch.Tensor) -> torch.Tensor:
    """U = G g G^T of every kernel: weight [C_out, C_in, 3, 3] -> [16, C_out, C_in] (a strided view)."""
    out_channels, in_channels = weight.shape[:2]
    kernels = weight.permute(0, 2, 3, 1).reshape(out_channels, 9, in_channels)  # a view if channels-last
    matrix = _kernel_transform_matrix(weight.dtype, weight.device).expand(out_channels, 16, 9)
    return torch.bmm(matrix, kernels).permute(1, 0, 2)  # [16, C_out, C_in]


def kernel_transform_transposed(grad_u: torch.Tensor) -> torch.Tensor:
    """G^T dU G: [16, C_out, C_in] -> the weight gradient [C_out, C_in, 3, 3], channels-last strides."""
    _, out_channels, in_channels = grad_u.shape
    matrix = _kernel_transform_matrix(grad_u.dtype, grad_u.device).t().expand(out_channels, 9, 16)
    kernels = torch.bmm(matrix, grad_u.permute(1, 0, 2))  # [C_out, 9, C_in]
    return kernels.view(out_channels, 3, 3, in_channels).permute(0, 3, 1, 2)


def _input_transform(x: torch.Tensor, tiles: int) -> torch.Tensor:
    """B^T d along dim 1 of x [N, 2*tiles + 2, R]: [4, N, tiles, R] (tiles overlap by 2)."""
    d = [x[:, y : y + 2 * tiles - 1 : 2] for y in range(4)]  # each [N, tiles, R]
    out = x.new_empty(4, *d[0].shape)
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])
    return out


def _input_transform_transposed(grad: torch.Tensor) -> torch.Tensor:
    """The transpose of `_input_transform`, from the first padding row on: grad [4, N, tiles, R] ->
    [N, 2*tiles, R] (rows 1 to 2*tiles of x; the rows past an odd side are the caller's to drop).

    Unpadded row 2t takes (as padded row 2t+1) rows 1 and 3 of tiles t and t-1; row 2t+1 rows 2 and 0
    of tiles t and t+1; with B^T's columns: g1 - g2 + g3 [t] - g3 [t-1] and g1 + g2 - g0 [t] + g0 [t+1].
    """
    _, n, tiles, r = grad.shape
    out = grad.new_empty(n, tiles, 2, r)
    even, odd = out[:, :, 0], out[:, :, 1]  # [N, tiles, R] each
    torch.sub(grad[1], grad[2], out=even)
    even += grad[3]
    even[:, 1:] -= grad[3, :, :-1]
    torch.add(grad[1], grad[2], out=odd)
    odd -= grad[0]
    odd[:, :-1] += grad[0, :, 1:]
    return out.view(n, 2 * tiles, r)


def _output_transform(m: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A^T m: m [4, N, tiles, R] -> [N, 2*tiles, R] (rows m0 + m1 + m2 and m1 - m2 - m3 of each tile),
    into `out` [N, 2*tiles, R] if given."""
    _, n, tiles, r = m.shape
    out = m.new_empty(n, tiles, 2, r) if out is None else out.view(n, tiles, 2, r)
    first, second = out[:, :, 0], out[:, :, 1]
    torch.add(m[0], m[1], out=first)
    first += m[2]
    torch.sub(m[1], m[2], out=second)
    second -= m[3]
    return out.view(n, 2 * tiles, r)


def _output_transform_transposed(grad: torch.Tensor) -> torch.Tensor:
    """The transpose of `_output_transform`: grad [N, 2*tiles, R] -> [4, N, tiles, R]."""
    first, second = grad[:, 0::2], grad[:, 1::2]  # [N, tiles, R] each
    out = grad.new_empty(4, *first.shape)
    out[0] = first
    torch.add(first, second, out=out[1])
    torch.sub(first, second, out=out[2])
    torch.neg(second, out=out[3])
    return out


def _tile_counts(height: int, width: int) -> tuple[int, int]:
    """2x2 output tiles along each side (an odd side gets one more row/column, cropped afterwards)."""
    return (height + 1) // 2, (width + 1) // 2


def input_tiles(input: torch.Tensor) -> torch.Tensor:
    """V = B^T d B of every 4x4 tile of the zero-padded input [B, C, H, W]: [16, B*tiles, C]."""
    batch, channels, height, width = input.shape
    tiles_h, tiles_w = _tile_counts(height, width)
    pixels = input.permute(0, 2, 3, 1)  # [B, H, W, C], a view of a channels-last input
    padded = F.pad(pixels, (0, 0, 1, 1 + 2 * tiles_w - width, 1, 1 + 2 * tiles_h - height))
    columns = _input_transform(padded.flatten(0, 1), tiles_w)  # [4 (v), B*Hp, tiles_w, C]
    columns = columns.view(4 * batch, 2 * tiles_h + 2, tiles_w * channels)  # [4*B, Hp, tiles_w*C]
    tiles = _input_transform(columns, tiles_h)  # [4 (u), 4*B, tiles_h, tiles_w*C]
    # (u, v) = (kernel row, kernel column) transform index
    return tiles.view(16, batch * tiles_h * tiles_w, channels)


def input_tiles_transposed(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The transpose of `input_tiles`: dV [16, B*tiles, C] -> the input gradient [B, C, H, W]
    (channels-last strides)."""
    channels = grad.shape[-1]
    tiles_h, tiles_w = _tile_counts(height, width)
    batch = grad.shape[1] // (tiles_h * tiles_w)
    rows = _input_transform_transposed(grad.view(4, 4 * batch, tiles_h, tiles_w * channels))  # [4*B, H2, ...]
    rows = rows.view(4, batch * 2 * tiles_h, tiles_w, channels)  # [4 (v), B*H2, tiles_w, C]
    pixels = _input_transform_transposed(rows).view(batch, 2 * tiles_h, 2 * tiles_w, channels)
    if height % 2 or width % 2:
        pixels = pixels[:, :height, :width].contiguous()  # [B, H, W, C]
    return pixels.permute(0, 3, 1, 2)


def output_tiles_transposed(grad_output: torch.Tensor) -> torch.Tensor:
    """dM = A dY A^T: grad_output [B, C, H, W] -> [16, B*tiles, C]."""
    batch, channels, height, width = grad_output.shape
    tiles_h, tiles_w = _tile_counts(height, width)
    pixels = grad_output.permute(0, 2, 3, 1)  # [B, H, W, C]
    if height % 2 or width % 2:
        pixels = F.pad(pixels, (0, 0, 0, 2 * tiles_w - width, 0, 2 * tiles_h - height))
    pixels = pixels.reshape(batch * 2 * tiles_h, 2 * tiles_w, channels)  # [B*H2, W2, C]
    columns = _output_transform_transposed(pixels)  # [4 (v), B*H2, tiles_w, C]
    columns = columns.view(4 * batch, 2 * tiles_h, tiles_w * channels)  # [4*B, H2, tiles_w*C]
    tiles = _output_transform_transposed(columns)  # [4 (u), 4*B, tiles_h, tiles_w*C]
    return tiles.view(16, batch * tiles_h * tiles_w, channels)


def output_tiles(m: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Y = A^T m A: m [16, B*tiles, C] -> the output [B, C, H, W], a new channels-last tensor."""
    channels = m.shape[-1]
    tiles_h, tiles_w = _tile_counts(height, width)
    rows = _output_transform(m.view(4, 4 * batch, tiles_h, tiles_w * channels))  # [4*B, H2, tiles_w*C]
    rows = rows.view(4, batch * 2 * tiles_h, tiles_w, channels)  # [4 (v), B*H2, tiles_w, C]
    out = torch.empty(
        (batch, channels, 2 * tiles_h, 2 * tiles_w),
        dtype=m.dtype,
        device=m.device,
        memory_format=torch.channels_last,
    )
    _output_transform(rows, out=out.permute(0, 2, 3, 1).view(batch * 2 * tiles_h, 2 * tiles_w, channels))
    if height % 2 or width % 2:
        out = out[:, :, :height, :width].contiguous(memory_format=torch.channels_last)
    return out


class Conv2dWinograd(torch.autograd.Function):
    """A 3x3, stride-1, padding-1 conv2d (groups=1) by Winograd F(2x2, 3x3), forward and backward."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        batch, _, height, width = input.shape
        tiles = input_tiles(input)  # [16, P, C_in]
        kernels = kernel_transform(weight)  # [16, C_out, C_in]
        products = torch.bmm(tiles, kernels.transpose(1, 2))  # [16, P, C_out]
        if bias is not None:
            products[5] += bias  # (u, v) = (1, 1) reaches all four outputs of a tile with weight 1
        ctx.save_for_backward(tiles, kernels)
        ctx.shape = (height, width)
        ctx.has_bias = bias is not None
        return output_tiles(products, batch, height, width)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        tiles, kernels = ctx.saved_tensors
        height, width = ctx.shape
        grad_products = output_tiles_transposed(grad_output)  # [16, P, C_out]
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = input_tiles_transposed(torch.bmm(grad_products, kernels), height, width)
        if ctx.needs_input_grad[1]:
            grad_weight = kernel_transform_transposed(torch.bmm(grad_products.transpose(1, 2), tiles))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias
