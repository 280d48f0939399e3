"""DETR's Hungarian set loss (the L_OBJ of detectors in λ fine-tuning) and its targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modinv
from modinv.data import make_loader, open_source
from modinv.training import finetune as ft
from modinv.training.set_loss import detr_targets, hungarian_match, set_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # root conftest: one intra-op thread for these small passes
SMALL_DETR = (64, 96)
NO_OBJECT = 91


def test_hungarian_matching_on_a_hand_made_case():
    """Two targets, three queries: the optimum is not the greedy choice (query 0 fits target 0 best,
    but query 0 is the only good fit of target 1, so target 0 must take query 2)."""
    def cxcywh(x0, y0, x1, y1):
        return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]

    targets = [{"labels": torch.tensor([5, 7]),
                "boxes": torch.tensor([cxcywh(0.1, 0.1, 0.3, 0.3), cxcywh(0.12, 0.12, 0.32, 0.32)])}]
    boxes = torch.tensor([[cxcywh(0.1, 0.1, 0.3, 0.3), cxcywh(0.6, 0.6, 0.9, 0.9), cxcywh(0.11, 0.1, 0.31, 0.3)]])
    logits = torch.full((1, 3, NO_OBJECT + 1), -5.0)
    logits[0, 0, 7] = 5.0  # query 0 says class 7 (target 1's)
    logits[0, 1, 5] = 5.0  # query 1 says class 5 but is far away
    logits[0, 2, 5] = 5.0  # query 2 says class 5 and sits on target 0
    (rows, cols), = hungarian_match(logits, boxes, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    losses = set_loss(logits, boxes, targets)
    # unmatched query 1 targets "no object"; matched ones their labels: the CE is the weighted mean
    weights = torch.tensor([1.0, 0.1, 1.0])
    ce = torch.stack([F.cross_entropy(logits[0, q], torch.tensor(c)) for q, c in ((0, 7), (1, NO_OBJECT), (2, 5))])
    assert torch.allclose(losses["loss_ce"], (weights * ce).sum() / weights.sum())
    l1 = (boxes[0, 0] - targets[0]["boxes"][1]).abs().sum() + (boxes[0, 2] - targets[0]["boxes"][0]).abs().sum()
    assert torch.allclose(losses["loss_bbox"], l1 / 2)
    total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert torch.allclose(losses["loss"], total)
    # an image without objects: nothing matched, every query targets "no object"
    empty = set_loss(logits, boxes, [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    assert empty["loss_bbox"] == 0 and empty["loss_giou"] == 0


def test_detr_targets_are_normalised_cxcywh():
    (t,) = detr_targets([torch.tensor([[10.0, 20.0, 30.0, 60.0]])], [torch.tensor([17])], image_size=(80, 40))
    assert t["labels"].tolist() == [17]
    assert torch.allclose(t["boxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))


def test_set_loss_decreases_on_tiny_coco(tiny_coco):
    """A few Adam steps on all of DETR's weights lower its set loss on COCO-format annotations (the
    targets and loss the fine-tuning uses)."""
    model = modinv.load_model("detr-r50", weights="random", input_size=SMALL_DETR)
    batch = next(iter(make_loader(open_source(f"coco:{tiny_coco}", size=SMALL_DETR, masks=False), batch_size=3)))
    targets = ft.batch_targets(model, batch)
    assert [t["labels"].tolist() for t in targets] == [[1], [17], [47, 50]]
    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        loss = ft.task_loss(model, model.output(model.trace(batch["image"])), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
