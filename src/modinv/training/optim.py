"""Per-component optimisers at the learning rates the model's metadata declares."""

from __future__ import annotations

import torch
from torch import Tensor, nn, optim

from modinv.models.base import StagedModel

# Rates for components the model's metadata does not name (the paper code's rates by component type).
CONV_LR, ATTENTION_LR = 1e-3, 1e-4


def attention_types() -> tuple[type[nn.Module], ...]:
    """The attention modules inverse components are built from: PyTorch's multi-head attention and
    timm's (the ViT blocks' ``timm.layers.Attention``, Swin's window attention)."""
    types: list[type[nn.Module]] = [nn.MultiheadAttention]
    try:
        from timm.layers import Attention
        from timm.models.swin_transformer import WindowAttention
    except ImportError:  # an older timm: PyTorch's attention only
        return tuple(types)
    return tuple(types + [Attention, WindowAttention])


def has_attention(module: nn.Module) -> bool:
    """True for transformer-like components (they get the smaller default learning rate)."""
    types = attention_types()
    return any(isinstance(m, types) for m in module.modules())


def default_learning_rate(model: StagedModel, stage: str, component: nn.Module) -> float:
    """The paper's rate for ``stage`` as ``model.meta.learning_rates`` declares it, otherwise one by
    component type (``ATTENTION_LR`` for transformer-like components, ``CONV_LR`` for the others)."""
    rate = model.meta.learning_rates.get(stage)
    if rate is not None:
        return float(rate)
    return ATTENTION_LR if has_attention(component) else CONV_LR


def flat_view(t: Tensor) -> Tensor | None:
    """``t``'s elements as a 1-D view in memory order (no copy), or None where ``t`` is not one
    dense block (a slice, an expanded tensor)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    permuted = t.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else None


class FlatViewAdam(optim.Adam):
    """:class:`torch.optim.Adam` whose fused kernel gets parameters stored in another dense layout
    (channels-last convolution weights) as 1-D views, and every tensor in its parameter's layout.

    PyTorch's fused CPU kernel walks the raw memory of a parameter, its gradient and its moments
    in step, and makes a contiguous copy of every non-contiguous gradient that it then does not
    read. So a channels-last gradient costs a copy for nothing (132 MB for DETR-R50's largest bb⁻¹
    weight: that component's update takes 64 ms with it, 38 without), and a gradient or moment in
    another layout than its parameter is read in the wrong order, silently: a moment saved from
    NCHW weights and resumed on channels-last ones, a gradient set by hand. Here a gradient in
    another layout is laid out as its parameter (as autograd lays it out) and such a moment once,
    in the optimiser's state; then the tensors of a non-contiguous parameter reach the kernel as
    1-D views in memory order (Adam is element-wise), contiguous, so nothing is copied. Updates,
    state and ``state_dict`` are :class:`torch.optim.Adam`'s: the moments keep the parameter's
    shape and layout, so resume states load in either class."""

    def _init_group(self, group: dict, params: list[Tensor], grads: list[Tensor], *state: list[Tensor]) -> bool:
        fused = group.get("fused") and not group.get("differentiable")
        if fused:
            self._lay_out_as_parameters(group["params"])
        has_complex = super()._init_group(group, params, grads, *state)
        if fused:
            moments = [lst for lst in state[:3] if len(lst) == len(params)]  # exp_avg, exp_avg_sq (and max)
            for i, p in enumerate(params):
                tensors = [p, grads[i], *(lst[i] for lst in moments)]
                if p.is_contiguous() or any(t.stride() != p.stride() for t in tensors):
                    continue  # contiguous already, or not one dense block (left to PyTorch)
                views = [flat_view(t) for t in tensors]
                if any(v is None for v in views):
                    continue
                params[i], grads[i] = views[0], views[1]
                for lst, view in zip(moments, views[2:]):
                    lst[i] = view
        return has_complex

    def _lay_out_as_parameters(self, params: list[Tensor]) -> None:
        """Gradients and moments whose strides differ from their (dense) parameter's, copied into
        its layout: the gradient as ``p.grad``, the moments in the state (once)."""
        for p in params:
            if p.grad is None or flat_view(p) is None:
                continue
            if p.grad.stride() != p.stride():
                p.grad = torch.empty_like(p, dtype=p.grad.dtype).copy_(p.grad)
            state = self.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                moment = state.get(key)
                if isinstance(moment, Tensor) and moment.shape == p.shape and moment.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=moment.dtype).copy_(moment)


def make_optimizer(component: nn.Module, lr: float, fused: bool = True) -> optim.Optimizer:
    """Adam over the component's trainable parameters (one optimiser per component).

    ``fused``: PyTorch's fused Adam kernel where the parameters' device has one (CPU and CUDA; the
    same update as the for-loop Adam to float rounding, ~4× faster on a 78 M-parameter component on
    CPU), through :class:`FlatViewAdam` (no copies of channels-last gradients), else the default
    implementation; False: the plain for-loop Adam (a reference to compare with).
    """
    params = [p for p in component.parameters() if p.requires_grad]
    if not fused:
        return optim.Adam(params, lr=lr, foreach=False, fused=False)
    try:
        return FlatViewAdam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return optim.Adam(params, lr=lr)
