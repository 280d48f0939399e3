"""FlatViewAdam: the fused kernel gets channels-last parameters as 1-D views (no gradient copy),
and the update and the state are torch.optim.Adam's."""

from __future__ import annotations

import pytest
import torch
from torch import nn, optim

from modinv.training.optim import FlatViewAdam, flat_view, make_optimizer


def _conv_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 4, 3, stride=2))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 4, 3, stride=2))
    b.load_state_dict(a.state_dict())
    return a.to(memory_format=torch.channels_last), b


def _train(module: nn.Module, optimizer: optim.Optimizer, steps: int = 5) -> None:
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        module(x.to(memory_format=torch.channels_last)).square().mean().backward()
        optimizer.step()


def test_flat_view_is_a_view_in_memory_order():
    t = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5).to(memory_format=torch.channels_last)
    v = flat_view(t)
    assert v.data_ptr() == t.data_ptr() and v.shape == (t.numel(),)
    assert torch.equal(v, t.permute(0, 2, 3, 1).reshape(-1))
    assert flat_view(torch.ones(3, 4)).data_ptr() is not None
    assert flat_view(torch.ones(4, 6)[:, ::2]) is None  # not one dense block
    assert flat_view(torch.ones(4, 1).expand(4, 3)) is None


def test_channels_last_parameters_reach_the_fused_kernel_contiguous_and_uncopied(monkeypatch):
    """What the kernel receives: contiguous 1-D views sharing memory with the parameters, their
    gradients and their moments (PyTorch's CPU kernel copies any other gradient)."""
    seen: list[list[tuple[bool, int]]] = []
    fused = torch._fused_adam_

    def spy(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs):
        seen.append([(t.is_contiguous(), t.data_ptr()) for t in [*params, *grads, *exp_avgs, *exp_avg_sqs]])
        return fused(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    module, _ = _conv_pair()
    optimizer = make_optimizer(module, 1e-2)
    assert isinstance(optimizer, FlatViewAdam)
    _train(module, optimizer, steps=2)
    params = list(module.parameters())
    state = [optimizer.state[p] for p in params]
    expected = [(True, t.data_ptr()) for t in [*params, *(p.grad for p in params),
                                               *(s["exp_avg"] for s in state), *(s["exp_avg_sq"] for s in state)]]
    assert seen[-1] == expected
    assert params[0].is_contiguous(memory_format=torch.channels_last) and not params[0].is_contiguous()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_updates_and_state_equal_torch_adam(amsgrad):
    """Channels-last parameters under FlatViewAdam end where PyTorch's for-loop Adam takes the
    same NCHW parameters (fused rounding only); the moments keep the parameter's shape and layout,
    and the state dict loads into torch.optim.Adam and back."""
    a, b = _conv_pair()
    fast = FlatViewAdam(a.parameters(), lr=1e-2, fused=True, amsgrad=amsgrad)
    plain = optim.Adam(b.parameters(), lr=1e-2, foreach=False, fused=False, amsgrad=amsgrad)
    _train(a, fast)
    _train(b, plain)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        s, t = fast.state[p], plain.state[q]
        assert s["exp_avg"].shape == p.shape and s["exp_avg"].stride() == p.stride()
        torch.testing.assert_close(s["exp_avg_sq"], t["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    stock = optim.Adam(a.parameters(), lr=1e-2, fused=True, amsgrad=amsgrad)
    stock.load_state_dict(fast.state_dict())
    again = FlatViewAdam(a.parameters(), lr=1e-2, fused=True, amsgrad=amsgrad)
    again.load_state_dict(stock.state_dict())
    assert int(again.state[next(a.parameters())]["step"]) == 5


def test_a_gradient_in_another_layout_is_laid_out_as_its_parameter():
    """A gradient whose strides differ from its parameter's (set by hand) is copied into the
    parameter's layout: the update equals the for-loop Adam's (PyTorch's fused CPU kernel reads it
    in the wrong order)."""
    p = nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    q = nn.Parameter(p.detach().clone().contiguous())
    fast = FlatViewAdam([p], lr=1e-1, fused=True)
    plain = optim.Adam([q], lr=1e-1, foreach=False)
    grad = torch.randn(4, 3, 2, 2)
    for _ in range(3):
        p.grad, q.grad = grad.clone(), grad.clone()  # p.grad NCHW, p channels-last
        fast.step()
        plain.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_moments_saved_from_nchw_parameters_resume_on_channels_last_ones():
    """A resume state written with NCHW weights, loaded where the weights are channels-last (another
    device's fast layout): the moments are laid out as the parameters, and training continues as
    the for-loop Adam on NCHW weights does (PyTorch's fused CPU kernel reads them in the wrong order)."""
    a, b = _conv_pair()
    a = a.to(memory_format=torch.contiguous_format)
    fused_a = optim.Adam(a.parameters(), lr=1e-2, fused=True)  # as a run on NCHW weights saves it
    plain_b = optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    _train(a, fused_a, steps=3)
    _train(b, plain_b, steps=3)
    saved = fused_a.state_dict()
    a = a.to(memory_format=torch.channels_last)
    fast = FlatViewAdam(a.parameters(), lr=1e-2, fused=True)
    fast.load_state_dict(saved)
    _train(a, fast, steps=3)
    _train(b, plain_b, steps=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert fast.state[p]["exp_avg"].stride() == p.stride()
    assert fast.param_groups[0]["fused"]
