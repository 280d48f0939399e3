"""modinv's ConvTranspose2d: PyTorch's module with a cheaper bf16 backward on CPUs.

Its gradients must be PyTorch's to bf16 rounding, in the layout of the weight, for every geometry the
inverse components use (and others: grouped, dilated, no bias, bigger grids); outside CPU bf16
training it must be PyTorch's path itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modinv.inverse.blocks import deconv
from modinv.inverse.conv_transpose import ConvTranspose2d, matmul_weight_grad_pays, weight_grad_by_matmul

pytestmark = pytest.mark.usefixtures("one_thread")

# (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, bias, grid H, W)
GEOMETRIES = {
    "k3 s1 token grid (matmul)": (64, 48, 3, 1, 1, 0, 1, 1, True, 3, 4),
    "k3 s2 token grid (matmul)": (64, 32, 3, 2, 1, 1, 1, 1, True, 3, 4),
    "k2 s2 (ViT, Swin; matmul)": (40, 16, 2, 2, 0, 0, 1, 1, True, 4, 5),
    "k1 s1 (matmul)": (48, 32, 1, 1, 0, 0, 1, 1, True, 3, 4),
    "k3 s2 big grid (oneDNN, no bias in it)": (8, 16, 3, 2, 1, 1, 1, 1, True, 12, 10),
    "k=s patches (local bb; matmul)": (64, 3, 4, 4, 0, 0, 1, 1, True, 2, 3),
    "no bias": (32, 16, 3, 2, 1, 1, 1, 1, False, 3, 4),
    "grouped (oneDNN)": (32, 16, 3, 2, 1, 1, 2, 1, True, 3, 4),
    "dilated (oneDNN)": (32, 16, 3, 1, 2, 0, 1, 2, True, 3, 4),
}


def _pair(geometry: tuple, channels_last: bool, seed: int = 0) -> tuple[nn.ConvTranspose2d, ConvTranspose2d]:
    c_in, c_out, k, s, p, op, groups, dil, bias, _, _ = geometry
    torch.manual_seed(seed)
    ref = nn.ConvTranspose2d(c_in, c_out, k, s, p, op, groups=groups, bias=bias, dilation=dil)
    ours = ConvTranspose2d(c_in, c_out, k, s, p, op, groups=groups, bias=bias, dilation=dil)
    ours.load_state_dict(ref.state_dict())
    if channels_last:
        ref, ours = ref.to(memory_format=torch.channels_last), ours.to(memory_format=torch.channels_last)
    return ref, ours


def _grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, amp: bool) -> dict[str, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = module(x)
    y.backward(grad_out.to(y.dtype))
    out = {"y": y.detach().float(), "x": x.grad.float(), "weight": module.weight.grad}
    if module.bias is not None:
        out["bias"] = module.bias.grad
    module.zero_grad(set_to_none=True)
    return out


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "NCHW"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_bf16_gradients_are_pytorchs_to_bf16_rounding(name, channels_last):
    geometry = GEOMETRIES[name]
    ref, ours = _pair(geometry, channels_last)
    c_in, h, w = geometry[0], geometry[-2], geometry[-1]
    x = torch.randn(2, c_in, h, w, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = ref(x).shape
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    expected, got = _grads(ref, x, grad_out, amp=True), _grads(ours, x, grad_out, amp=True)
    exact = _grads(ref.double(), x.double(), grad_out.double(), amp=False)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
        # ours is as far from the float64 truth as PyTorch's own bf16 path is, up to bf16 rounding
        assert _relative(got[key], exact[key]) <= max(2 * _relative(expected[key], exact[key]), 0.02), key
    assert torch.equal(got["y"], expected["y"])  # the forward is the same call


def test_the_fast_backward_runs_only_in_cpu_bf16_training():
    _, ours = _pair(GEOMETRIES["k3 s2 token grid (matmul)"], channels_last=True)
    x = torch.randn(2, 64, 3, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(ours(x).grad_fn).__name__ == "_Bf16ConvTransposeBackward"
        with torch.no_grad():
            assert ours(x).grad_fn is None
    assert type(ours(x).grad_fn).__name__ == "ConvolutionBackward0"  # float32: PyTorch's own
    with torch.autocast("cpu", dtype=torch.float16):
        assert type(ours(x).grad_fn).__name__ != "_Bf16ConvTransposeBackward"


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "NCHW"])
def test_matmul_weight_gradient_is_exact_in_float64_and_laid_out_as_the_weight(channels_last):
    for name in ("k3 s1 token grid (matmul)", "k3 s2 token grid (matmul)", "k2 s2 (ViT, Swin; matmul)",
                 "k3 s2 big grid (oneDNN, no bias in it)", "k=s patches (local bb; matmul)"):
        c_in, c_out, k, s, p, op, _, _, _, h, w = GEOMETRIES[name]
        weight = torch.randn(c_in, c_out, k, k, dtype=torch.float64, requires_grad=True)
        x = torch.randn(2, c_in, h, w, dtype=torch.float64)
        y = torch.nn.functional.conv_transpose2d(x, weight, None, s, p, op)
        grad = torch.randn_like(y)
        y.backward(grad)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        got = weight_grad_by_matmul(grad, x.contiguous(memory_format=torch.channels_last),
                                    weight.detach().contiguous(memory_format=layout), (s, s), (p, p))
        assert got.shape == weight.shape
        assert got.is_contiguous(memory_format=layout), name
        torch.testing.assert_close(got, weight.grad, rtol=1e-10, atol=1e-10)


def test_the_matmul_rule_follows_the_grid_and_the_channels():
    token_grid = torch.empty(2, 2048, 15, 20)  # DETR's bb⁻¹ on its 15×20 grid: 600 pixels, 2048 channels
    assert matmul_weight_grad_pays(token_grid, 1, (1, 1))
    assert not matmul_weight_grad_pays(torch.empty(2, 128, 240, 320), 1, (1, 1))  # a big map: oneDNN
    assert not matmul_weight_grad_pays(token_grid, 2, (1, 1)) and not matmul_weight_grad_pays(token_grid, 1, (2, 2))


def test_it_is_pytorchs_module_to_everything_else():
    layers = deconv(8, 4, 3, 2)
    conv = layers[0]
    assert isinstance(conv, ConvTranspose2d) and isinstance(conv, nn.ConvTranspose2d)
    plain = nn.ConvTranspose2d(8, 4, 3, 2, 1, 1)
    assert list(conv.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, 5, 6)
    torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(conv(x, output_size=[9, 12]), plain(x, output_size=[9, 12]), rtol=0, atol=0)
