"""The roles models declare (modinv.models.roles): token grids, token replacement with positions,
DETR's post-processing, the task loss, layer stacks, and the one sentence when a role is absent."""

from __future__ import annotations

import pytest
import torch

import modinv
from modinv.errors import ModinvError
from modinv.models.detr import postprocess
from modinv.models.roles import TokenGrid, as_tokens, from_tokens

SWIN_TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}


@pytest.fixture(scope="module")
def swin() -> modinv.StagedModel:
    return modinv.load_model("swin-b", weights="random", seed=0, input_size=(64, 64), **SWIN_TINY)


@pytest.fixture(scope="module")
def vit() -> modinv.StagedModel:
    return modinv.load_model("vit-b16", weights="random", seed=0, input_size=(32, 32))


def test_swin_declares_every_stage_on_its_grid_with_windows(swin):
    grids = swin.token_stages()
    shapes = swin.stage_shapes()
    assert list(grids) == list(swin.stages)
    for stage, grid in grids.items():
        h, w, _ = shapes[stage]  # channels-last maps
        assert grid.grid == (h, w) and grid.layout == "nhwc" and grid.window == (2, 2) and grid.position is None
    assert swin.layer_stacks() == swin.stages[1:]


def test_replacing_tokens_of_a_channels_last_map(swin):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trace = swin.trace(images)
    x = trace["s1"]
    idx = torch.tensor([[0, 17], [5, 255]])
    values = torch.randn(2, x.shape[-1])
    y = swin.replace_tokens(trace, "s1", idx, values)
    assert y.shape == x.shape
    changed = (y != x).any(-1).flatten(1)  # B×(H·W), row-major
    for b in range(2):
        assert changed[b].nonzero().flatten().tolist() == idx[b].tolist()
        r, c = divmod(int(idx[b, 1]), x.shape[2])
        torch.testing.assert_close(y[b, r, c], values[b])  # no absolute position in Swin
    assert swin.token_content(trace, "s1").shape == (2, 256, x.shape[-1])


def test_vit_replaced_tokens_carry_their_position_at_bb_only(vit):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trace = vit.trace(images)
    grids = vit.token_stages()
    assert grids["bb"] == TokenGrid((2, 2), 1, position="embedded") and grids["enc"] == TokenGrid((2, 2), 1)
    pos = vit.token_position(trace, "bb")
    assert pos.shape == (1, 4, 768) and vit.token_position(trace, "enc") is None
    values = torch.randn(1, 768)
    y = vit.replace_tokens(trace, "bb", torch.tensor([[3]]), values)
    torch.testing.assert_close(y[0, 1 + 3], values[0] + pos[0, 3])
    torch.testing.assert_close(y[0, :4], trace["bb"][0, :4])  # class token and the other patches untouched
    # the content of the tokens is what is left once their position embedding is taken out
    torch.testing.assert_close(vit.token_content(trace, "bb"), trace["bb"][:, 1:] - pos)


def test_layouts_round_trip():
    x = torch.randn(2, 5, 3, 4)
    assert torch.equal(from_tokens(as_tokens(x, "nchw"), "nchw", x), x)
    assert torch.equal(from_tokens(as_tokens(x, "nhwc"), "nhwc", x), x)
    assert torch.equal(as_tokens(x, "nchw")[:, 6], x[:, :, 1, 2])  # row 1, column 2 of a 3×4 map


def test_detr_post_processing_by_hand():
    logits = torch.full((1, 2, 4), -20.0)  # 3 real classes + no object
    logits[0, 0, 1] = 5.0  # query 0: class 1
    logits[0, 1, 3] = 5.0  # query 1: no object (its best real class still reported, with a tiny score)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.25, 0.25, 0.5, 0.5]]])
    (out,) = postprocess(logits, boxes, torch.tensor([[100, 200]]))
    assert out["labels"][0] == 1 and out["scores"][0] > 0.99 and out["scores"][1] < 1e-8
    torch.testing.assert_close(out["boxes"][0], torch.tensor([50.0, 37.5, 150.0, 62.5]))  # xyxy pixels of 100×200


def test_missing_roles_are_one_sentence(vit):
    mnet = modinv.load_model("mobilenet-v2", weights="random", seed=0, input_size=(32, 32))
    assert mnet.token_stages() == {} and mnet.prediction_stage() is None and mnet.layer_stacks() == ()
    with pytest.raises(ModinvError, match=r"^detection needs a detector's post-processing .*; mobilenet-v2 declares none$"):
        mnet.detections(mnet.trace(torch.zeros(1, 3, 32, 32)))
    with pytest.raises(ModinvError, match=r"^layers needs stacks of same-shape intermediate layers; mobilenet-v2 declares none$"):
        mnet.layers(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ModinvError, match="^tokens needs a token stage 's4'"):
        mnet.token_stage("s4", "tokens")
    # a classifier's task loss is cross-entropy on its logits
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = vit.task_targets({"label": torch.tensor([0, 1])})
    torch.testing.assert_close(vit.task_loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
