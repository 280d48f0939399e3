"""A transposed convolution whose bf16 training backward on CPUs is cheaper than oneDNN's own.

``ConvTranspose2d`` is :class:`torch.nn.ConvTranspose2d` (same parameters, same state dict, same
forward); only its backward under CPU bf16 autocast changes, for two measured reasons (2-core Zen 5
with AVX512-BF16, batch 2, DETR-R50's bb⁻¹ layers, benchmarks/README.md):

- oneDNN's weight-gradient kernel for transposed convolutions also computes the bias gradient,
  which on channels-last bf16 maps costs more than the weight gradient itself (128→64 channels on
  480×640: 261 ms with the bias, 101 ms without); a sum over the output gradient gives it in 10 ms.
- On small grids (B·H·W at most twice the input channels: the 15×20 token grid of 2048 channels)
  the weight gradient is one matrix product of the input with the unfolded output gradient, which
  runs near the bf16 matmul peak where oneDNN's direct kernel does not (2048→1792, 3×3: 107 ms vs 194).

Both compute the same sums in another order (bf16 products, float32 accumulation), so gradients
differ from oneDNN's by bf16 rounding only. Other devices, float32, inference and anything not
training keep PyTorch's path untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fast_backward_applies(x: Tensor) -> bool:
    """Whether a transposed convolution of ``x`` takes :class:`_Bf16ConvTranspose` now: CPU, bf16
    autocast, gradients being recorded."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def weight_grad_by_matmul(grad: Tensor, x: Tensor, weight: Tensor, stride: tuple[int, int],
                          padding: tuple[int, int]) -> Tensor:
    """The weight gradient (C_in × C_out × kh × kw, laid out as ``weight``) of
    ``conv_transpose2d(x, weight)`` as one matrix product.

    Input pixel m of a transposed convolution paints output pixels ``stride·m − padding + k``,
    k < kernel: exactly the window :func:`torch.nn.functional.unfold` takes at m from the output
    gradient with the same kernel, stride and padding. So dW = xᵀ · unfold(grad) over all B·H·W pixels.
    The product is ordered as ``weight`` is stored (a channels-last weight is C_in × kh × kw × C_out
    in memory), so that no reorder of the gradient follows.
    """
    b, c_in, h, w = x.shape
    c_out, kh, kw = weight.shape[1:]
    windows = F.unfold(grad, (kh, kw), padding=padding, stride=stride).view(b, c_out, kh * kw, h * w)
    pixels = x.permute(0, 2, 3, 1).reshape(b * h * w, c_in)
    if weight.is_contiguous(memory_format=torch.channels_last):
        windows = windows.permute(0, 3, 2, 1).reshape(b * h * w, kh * kw * c_out)
        return (pixels.t() @ windows).view(c_in, kh, kw, c_out).permute(0, 3, 1, 2)
    windows = windows.permute(0, 3, 1, 2).reshape(b * h * w, c_out * kh * kw)
    return (pixels.t() @ windows).view(c_in, c_out, kh, kw)


def matmul_weight_grad_pays(x: Tensor, groups: int, dilation: tuple[int, ...]) -> bool:
    """The matrix-product weight gradient is used for ungrouped, undilated layers whose B·H·W is at
    most twice their input channels (where it was measured faster; above, oneDNN's kernel was)."""
    b, c_in, h, w = x.shape
    return groups == 1 and all(d == 1 for d in dilation) and b * h * w <= 2 * c_in


class _Bf16ConvTranspose(torch.autograd.Function):
    """conv_transpose2d of bf16 tensors with the cheaper backward described in the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], output_padding: tuple[int, int], groups: int,
                dilation: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, output_padding, groups, dilation)
        return torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, True, output_padding, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, output_padding, groups, dilation = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        by_matmul = need_w and matmul_weight_grad_pays(x, groups, dilation)
        grad_x = grad_w = grad_b = None
        if need_x or (need_w and not by_matmul):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, True, output_padding, groups,
                [need_x, need_w and not by_matmul, False])
        if by_matmul:
            grad_w = weight_grad_by_matmul(grad, x, weight, stride, padding)
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` whose backward under CPU bf16 autocast is cheaper (module docstring)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or x.ndim != 4 or not fast_backward_applies(x):
            return super().forward(x, output_size)
        dtype = torch.bfloat16  # what autocast would cast to; the casts stay on autograd's record
        bias = self.bias.to(dtype) if self.bias is not None else None
        return _Bf16ConvTranspose.apply(x.to(dtype), self.weight.to(dtype), bias, self.stride, self.padding,
                                        self.output_padding, self.groups, self.dilation)
