"""The pieces of λ fine-tuning that concern the forward model: its task loss L_OBJ and its targets,
its training mode, gradient scaling into it, and saving its weights.

The task loss and its targets are roles the model declares (``model.task_loss``,
``model.task_targets``): DETR's adapter its Hungarian set loss against COCO boxes, a classifier
cross-entropy against class labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.fileio import atomic_write
from modinv.models.base import StagedModel

FORWARD_MODES = ("dropout", "eval", "train")
FORWARD_WEIGHTS_FILE = "forward.safetensors"


def default_finetune_stage(model: StagedModel) -> str:
    """The stage j the paper fine-tuned ``model`` from, as its metadata declares it (DETR ``dec``,
    ViT/DeiT ``enc``); one sentence for a model that declares none."""
    declared = model.meta.finetune_stage
    if declared is None:
        raise ModinvError(f"{model.name!r} declares no stage j for λ fine-tuning; pass --stage (one of "
                          f"{', '.join(model.stages)})")
    return declared


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged (bit for bit) in the forward pass; its gradient multiplied by ``scale``."""
    return _ScaleGradient.apply(x, float(scale))


def task_kind(model: StagedModel) -> str:
    """``"detection"`` for a model whose metadata declares it (its own set loss, COCO AP), otherwise
    ``"classification"`` (cross-entropy, top-1; the loss checks that the output is B×classes logits)."""
    return "detection" if model.meta.task == "detection" else "classification"


def batch_targets(model: StagedModel, batch: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
    """L_OBJ's targets from a collated batch, as the model declares them (``model.task_targets``:
    a detector's adapter converts the COCO boxes, a classifier takes the int64 class labels)."""
    return model.task_targets(batch, device)


def task_loss(model: StagedModel, output: Any, targets: Any) -> Tensor:
    """L_OBJ, the task loss the model declares (``model.task_loss``): DETR's Hungarian set loss
    (class 1, L1 5, GIoU 2, no-object 0.1), a classifier's cross-entropy."""
    return model.task_loss(output, targets)


def set_forward_mode(model: nn.Module, mode: str) -> None:
    """Put the forward model into ``mode``: "dropout" (training mode but BatchNorm keeps its
    statistics), "eval" or "train" (see :mod:`modinv.training.finetune`)."""
    if mode not in FORWARD_MODES:
        raise ModinvError(f"unknown forward mode {mode!r}; valid: {', '.join(FORWARD_MODES)}")
    model.train(mode != "eval")
    if mode == "dropout":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def forward_state_dict(model: StagedModel) -> dict[str, Tensor]:
    """The wrapped network's state dict in the key layout ``load_model(weights=PATH)`` reads: the
    adapter's common prefix (e.g. ``net.``) removed; tensors contiguous CPU copies."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state):
        prefix = heads.pop() + "."
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def save_forward_weights(model: StagedModel, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the forward model's weights as a safetensors state dict (atomically)."""
    from safetensors.torch import save_file

    state, header = forward_state_dict(model), {"model": model.name, **dict(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))
