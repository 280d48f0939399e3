"""DETR's Hungarian set loss (Carion et al. 2020): the task loss the DETR adapter declares (L_OBJ of λ fine-tuning, Eq. 3).

    targets = detr_targets(batch["boxes"], batch["labels"], image_size=(H, W))
    losses = set_loss(out["logits"], out["pred_boxes"], targets)   # {"loss", "loss_ce", ...}

Predictions: ``logits`` B×Q×(C+1) (the last class is "no object"; C = 91 for DETR-R50, whose class
index is the COCO category id) and ``pred_boxes`` B×Q×4 normalised (cx, cy, w, h). Targets: one
dict per image with ``labels`` (int64 N, < C) and ``boxes`` (N×4 normalised cx, cy, w, h).

As in DETR: each image's predictions are matched one-to-one to its targets by the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment``) on the cost
``class_weight · (−p(target class)) + bbox_weight · L1 + giou_weight · (−GIoU)``; the loss is the
class cross-entropy over all queries (unmatched ones target "no object", whose class weight is
``no_object_weight``) plus, over matched pairs, the L1 box loss and 1 − GIoU, both divided by the
number of target boxes in the batch (at least 1). Weights: class 1, L1 5, GIoU 2, no-object 0.1.
Only the last decoder layer is supervised (DETR's auxiliary per-layer losses are not used).
Box conversions and GIoU are torchvision's (``box_convert``, ``generalized_box_iou``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from modinv.errors import ModinvError

__all__ = ["SetLossWeights", "detr_targets", "hungarian_match", "match_cost", "set_loss"]


@dataclass(frozen=True)
class SetLossWeights:
    """DETR's weights, used both in the matching cost and in the loss."""

    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    no_object_weight: float = 0.1


DETR_WEIGHTS = SetLossWeights()


def detr_targets(
    boxes: Sequence[Tensor], labels: Sequence[Tensor], image_size: tuple[int, int], device=None
) -> list[dict[str, Tensor]]:
    """COCO-source annotations of a batch -> DETR targets.

    ``boxes``: per image N×4 xyxy pixels of the (resized) H×W image, as the COCO source yields them;
    ``labels``: per image N COCO category ids (DETR's class index is the category id). Returns per
    image ``{"labels": int64 N, "boxes": N×4 normalised (cx, cy, w, h)}``.
    """
    from torchvision.ops import box_convert  # imported on use: listing models stays light

    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    out = []
    for b, l in zip(boxes, labels):
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        cxcywh = box_convert(b / scale, "xyxy", "cxcywh")
        out.append({"labels": torch.as_tensor(l, dtype=torch.int64).reshape(-1).to(device),
                    "boxes": cxcywh.to(device)})
    return out


def match_cost(logits: Tensor, boxes: Tensor, target_labels: Tensor, target_boxes: Tensor,
               weights: SetLossWeights = DETR_WEIGHTS) -> Tensor:
    """Q×N matching cost of one image's Q predictions against its N targets (DETR's matcher)."""
    from torchvision.ops import box_convert, generalized_box_iou

    prob = logits.float().softmax(-1)
    cost_class = -prob[:, target_labels]
    cost_bbox = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    cost_giou = -generalized_box_iou(
        box_convert(boxes.float(), "cxcywh", "xyxy"), box_convert(target_boxes.float(), "cxcywh", "xyxy")
    )
    return weights.class_weight * cost_class + weights.bbox_weight * cost_bbox + weights.giou_weight * cost_giou


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]],
                    weights: SetLossWeights = DETR_WEIGHTS) -> list[tuple[Tensor, Tensor]]:
    """Per image ``(query indices, target indices)`` (int64, sorted by query) of the minimum-cost
    one-to-one matching (``scipy.optimize.linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for i, target in enumerate(targets):
        n = len(target["labels"])
        if n == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            out.append((empty, empty.clone()))
            continue
        cost = match_cost(logits[i], boxes[i], target["labels"].to(logits.device),
                          target["boxes"].to(boxes.device), weights)
        cost = cost.cpu().numpy()
        if not np.isfinite(cost).all():
            raise ModinvError("the matching cost holds NaN or inf: the predictions are not finite")
        rows, cols = linear_sum_assignment(cost)
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


def set_loss(logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]],
             weights: SetLossWeights = DETR_WEIGHTS) -> dict[str, Tensor]:
    """DETR's set loss of a batch: ``{"loss", "loss_ce", "loss_bbox", "loss_giou"}`` (scalars;
    ``loss = class_weight·loss_ce + bbox_weight·loss_bbox + giou_weight·loss_giou``), plus
    ``"indices"``, the matching from :func:`hungarian_match`."""
    from torchvision.ops import box_convert, generalized_box_iou

    if logits.ndim != 3 or boxes.ndim != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise ModinvError(
            f"set_loss needs logits B×Q×(C+1) and boxes B×Q×4, got {tuple(logits.shape)} and {tuple(boxes.shape)}"
        )
    if len(targets) != logits.shape[0]:
        raise ModinvError(f"set_loss got {len(targets)} targets for a batch of {logits.shape[0]} images")
    num_classes = logits.shape[-1] - 1  # the last index is "no object"
    for target in targets:
        labels = target["labels"]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ModinvError(
                f"target class {int(labels.max())} is outside the model's {num_classes} classes "
                "(DETR's class index is the COCO category id, 1..90)"
            )
    device = logits.device
    indices = hungarian_match(logits.detach(), boxes.detach(), targets, weights)
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([q for q, _ in indices]).to(device)

    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=device)
    matched_labels = torch.cat([t["labels"].to(device)[j] for t, (_, j) in zip(targets, indices)])
    target_classes[batch_idx, query_idx] = matched_labels
    class_weights = torch.ones(num_classes + 1, device=device)
    class_weights[-1] = weights.no_object_weight
    loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight=class_weights)

    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    matched_pred = boxes.float()[batch_idx, query_idx]
    matched_target = torch.cat([t["boxes"].to(device).float()[j] for t, (_, j) in zip(targets, indices)])
    loss_bbox = F.l1_loss(matched_pred, matched_target, reduction="sum") / num_boxes
    giou = generalized_box_iou(box_convert(matched_pred, "cxcywh", "xyxy"), box_convert(matched_target, "cxcywh", "xyxy"))
    loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
    loss = weights.class_weight * loss_ce + weights.bbox_weight * loss_bbox + weights.giou_weight * loss_giou
    return {"loss": loss, "loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "indices": indices}
