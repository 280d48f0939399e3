"""Per-component optimisers at the learning rates the model's metadata declares."""

from __future__ import annotations

from torch import nn, optim

from modinv.models.base import StagedModel

# Rates for components the model's metadata does not name (the paper code's rates by component type).
CONV_LR, ATTENTION_LR = 1e-3, 1e-4


def has_attention(module: nn.Module) -> bool:
    """True for transformer-like components (they get the smaller default learning rate)."""
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention" for m in module.modules())


def default_learning_rate(model: StagedModel, stage: str, component: nn.Module) -> float:
    """The paper's rate for ``stage`` as ``model.meta.learning_rates`` declares it, otherwise one by
    component type (``ATTENTION_LR`` for transformer-like components, ``CONV_LR`` for the others)."""
    rate = model.meta.learning_rates.get(stage)
    if rate is not None:
        return float(rate)
    return ATTENTION_LR if has_attention(component) else CONV_LR


def make_optimizer(component: nn.Module, lr: float) -> optim.Optimizer:
    """Adam over the component's trainable parameters (one optimiser per component)."""
    return optim.Adam([p for p in component.parameters() if p.requires_grad], lr=lr)
