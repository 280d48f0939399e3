"""Per-component optimisers at the learning rates the model's metadata declares."""

from __future__ import annotations

from torch import nn, optim

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


def make_optimizer(component: nn.Module, lr: float, fused: bool = True) -> optim.Optimizer:
    """Adam over the component's trainable parameters (one optimiser per component).

    ``fused``: PyTorch's fused Adam kernel where the parameters' device has one (CPU and CUDA; the
    same update as the for-loop Adam to float rounding, ~4× faster on a 78 M-parameter component on
    CPU), else the default implementation; False: the plain for-loop Adam (a reference to compare with).
    """
    params = [p for p in component.parameters() if p.requires_grad]
    if not fused:
        return optim.Adam(params, lr=lr, foreach=False, fused=False)
    try:
        return optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return optim.Adam(params, lr=lr)
