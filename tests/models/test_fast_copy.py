"""StagedModel.fast_copy: the frozen model cast once and laid out for speed, the original untouched.

DETR-R50 (random weights, 64×64: a 2×2 token grid) folds its frozen BatchNorms into the
convolutions before them; its BatchNorm statistics are randomised first (at random initialisation
they are the identity, where a wrong fold would go unseen). Tolerances, on the largest difference
over the largest magnitude of each stage: float32 copy 1e-4 (measured 1e-6: the fold's rounding);
bf16 copy under autocast 0.05 against float32 (measured: DETR ≤ 0.026, MobileNet-V2 ≤ 0.012; at
128×160 DETR's 0.028 was within 1.2× of plain autocast's own difference; a wrong cast, fold or
layout is off by O(1)).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

import modinv
from modinv.models.detr import DetrStagedModel

SIZE = (64, 64)
FLOAT32_TOL, BF16_TOL = 1e-4, 0.05


@pytest.fixture(scope="module")
def detr_small(detr: DetrStagedModel) -> DetrStagedModel:
    """A copy of the session's DETR at 64×64 with random frozen-BatchNorm statistics and affines."""
    model = DetrStagedModel(copy.deepcopy(detr.detr), input_size=SIZE).freeze()
    generator = torch.Generator().manual_seed(0)
    for norm in model.modules():
        if isinstance(norm, DetrFrozenBatchNorm2d):
            c = norm.weight.shape[0]
            norm.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
            norm.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
            norm.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
            norm.bias.copy_(0.2 * torch.randn(c, generator=generator))
    return model


def _images(model: modinv.StagedModel) -> torch.Tensor:
    return torch.rand(2, 3, *model.input_size, generator=torch.Generator().manual_seed(1))


def _worst(trace, reference) -> dict[str, float]:
    """Per stage: the largest difference over the largest magnitude of the reference."""
    return {s: float((trace[s].float() - v).abs().max() / v.abs().max()) for s, v in reference.stages.items()}


def _count(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_float32_copy_folds_detr_frozen_norms_and_keeps_the_outputs(detr_small):
    before = {k: v.clone() for k, v in detr_small.state_dict().items()}
    fast = detr_small.fast_copy()
    assert _count(fast, DetrFrozenBatchNorm2d) == 0 and _count(detr_small, DetrFrozenBatchNorm2d) == 53
    assert not any(p.requires_grad for p in fast.parameters()) and not fast.training
    images = _images(detr_small)
    with torch.no_grad():
        worst = _worst(fast.trace(images), detr_small.trace(images))
    assert max(worst.values()) < FLOAT32_TOL, worst
    assert all(torch.equal(v, detr_small.state_dict()[k]) for k, v in before.items())  # the original is untouched


@pytest.mark.parametrize("name", ["detr", "mobilenet"])
def test_bf16_copy_is_cast_once_and_laid_out_channels_last(name, detr_small, request):
    model = detr_small if name == "detr" else modinv.load_model("mobilenet-v2", weights="random", input_size=(32, 32))
    fast = model.fast_copy(torch.bfloat16, torch.channels_last)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())  # the user's model
    assert fast.mean.dtype == fast.std.dtype == torch.float32  # input normalisation stays float32
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    images = _images(model)
    with torch.no_grad():
        reference = model.trace(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trace = fast.trace(images)
    assert trace["img"].dtype == torch.float32  # the image (bb⁻¹'s target) keeps its precision
    assert all(trace[s].dtype == torch.bfloat16 for s in model.stages)
    worst = _worst(trace, reference)
    assert max(worst.values()) < BF16_TOL, worst
