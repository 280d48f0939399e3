"""Per-component optimisers with the learning rates of the paper's code."""

from __future__ import annotations

from torch import nn, optim

# (model, stage) -> Adam learning rate, from the paper's code (DESIGN.md, "Training").
PAPER_LEARNING_RATES: dict[tuple[str, str], float] = {
    ("detr-r50", "bb"): 1e-3,
    ("detr-r50", "enc"): 1e-3,
    ("detr-r50", "dec"): 1e-4,
    ("detr-r50", "pred"): 1e-3,
    ("vit-b16", "bb"): 1e-3,
    ("vit-b16", "enc"): 1e-4,
    ("vit-b16-noselfattn", "bb"): 1e-3,
    ("vit-b16-noselfattn", "enc"): 1e-4,
}
CONV_LR, ATTENTION_LR = 1e-3, 1e-4


def has_attention(module: nn.Module) -> bool:
    """True for transformer-like components (they get the smaller default learning rate)."""
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__ == "Attention" for m in module.modules())


def default_learning_rate(model_name: str, stage: str, component: nn.Module) -> float:
    """The paper's rate for its own components, otherwise by component type."""
    rate = PAPER_LEARNING_RATES.get((model_name, stage))
    if rate is not None:
        return rate
    return ATTENTION_LR if has_attention(component) else CONV_LR


def make_optimizer(component: nn.Module, lr: float) -> optim.Optimizer:
    """Adam over the component's trainable parameters (one optimiser per component)."""
    return optim.Adam([p for p in component.parameters() if p.requires_grad], lr=lr)
