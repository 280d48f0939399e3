"""The pieces of λ fine-tuning that concern the forward model: its task loss L_OBJ and its targets,
its training mode, gradient scaling into it, and saving its weights.

"Is this a detector?" is the model's declared metadata (``model.meta.task``): detectors train on
DETR's Hungarian set loss against COCO boxes, everything else on cross-entropy against class labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.fileio import atomic_write
from modinv.models.base import StagedModel
from modinv.training.set_loss import detr_targets, set_loss

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
    """``"detection"`` for a model whose metadata declares it (set loss, COCO AP), otherwise
    ``"classification"`` (cross-entropy, top-1; the loss checks that the output is B×classes logits)."""
    return "detection" if model.meta.task == "detection" else "classification"


def batch_targets(model: StagedModel, batch: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
    """L_OBJ's targets from a collated batch: DETR targets (normalised cxcywh boxes, labels = COCO
    category ids) from a COCO source, or the int64 class labels of an ImageNet-style source."""
    if task_kind(model) == "detection":
        if "boxes" not in batch or "labels" not in batch:
            raise ModinvError(
                f"the objective of {model.name!r} is its set loss on COCO boxes: fine-tune with λ < 1 on a "
                "coco:ROOT[:split] source"
            )
        return detr_targets(batch["boxes"], batch["labels"], tuple(model.input_size), device=device)
    label = batch.get("label")
    if not isinstance(label, Tensor):
        raise ModinvError(
            f"the objective of {model.name!r} is cross-entropy on class labels: fine-tune with λ < 1 on an "
            "imagenet:ROOT source (one folder per class)"
        )
    return label.to(device)


def task_loss(model: StagedModel, output: Any, targets: Any) -> Tensor:
    """L_OBJ: the set loss of a detector (class 1, L1 5, GIoU 2, no-object 0.1) or cross-entropy."""
    if task_kind(model) == "detection":
        return set_loss(output["logits"], output["pred_boxes"], targets)["loss"]
    if not isinstance(output, Tensor) or output.ndim != 2:
        raise ModinvError(f"model {model.name!r} does not output class logits (B×classes); it cannot be fine-tuned "
                          "with cross-entropy")
    if int(targets.max()) >= output.shape[1]:
        raise ModinvError(f"class label {int(targets.max())} is outside the model's {output.shape[1]} classes")
    return F.cross_entropy(output.float(), targets)


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
