"""``modinv efficiency``: FLOPs against hand counts, and the command's JSON + figure."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import modinv
from modinv.analysis.efficiency import measure_efficiency, training_step_cost
from modinv.cli import main
from modinv.errors import ModinvError


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _strict(text: str):
    def reject(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    """``modinv efficiency`` on ViT-B/16 with random weights at 32×32 (2×2 patches)."""
    out = tmp_path_factory.mktemp("efficiency")
    rc = main(["efficiency", "--model", "vit-b16", "--weights", "random", "--input-size", "32", "32",
               "--device", "cpu", "--batch", "2", "--out", str(out)])
    return rc, out


def test_linear_training_flops_equal_a_hand_count():
    batch, tokens = 2, 5
    x = torch.rand(batch, tokens, 16)
    net = lambda: nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))  # noqa: E731
    cost = training_step_cost(net, lambda m: m(x).pow(2).mean(), "cpu", batch, steps=1)
    first, second = 2 * 16 * 8 * batch * tokens, 2 * 8 * 4 * batch * tokens  # forward: 2·in·out·tokens
    assert cost.forward_flops_per_image == (first + second) / batch
    # backward: the second layer needs weight and input gradients (2× its forward), the first only its
    # weight gradient (its input, like a frozen feature, needs none)
    assert cost.train_flops_per_image == (first + second + first + 2 * second) / batch
    assert cost.params == 16 * 8 + 8 + 8 * 4 + 4
    assert cost.peak_memory_bytes >= 4 * 4 * cost.params  # weights, gradients, two Adam moments (float32)
    assert cost.seconds_per_step > 0


def test_cli_writes_json_and_figure_for_every_stage(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    data = _strict((out / "efficiency.json").read_text())
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and data["figure"] == "efficiency.png"
    assert data["stages"] == ["bb", "enc"] and data["precision"] == "float32"
    for way in ("modular", "classic"):
        assert set(data[way]) == {"bb", "enc"}
        for cost in data[way].values():
            assert cost["params"] > 0 and cost["seconds_per_step"] > 0 and cost["peak_memory_bytes"] > 0
            assert cost["train_flops_per_image"] > cost["forward_flops_per_image"] > 0
    assert data["memory_method"].startswith("estimate")  # CPU: said honestly
    modular, classic = data["modular"], data["classic"]
    assert classic["enc"]["stages"] == ["enc", "bb"] and modular["enc"]["stages"] == ["enc"]
    assert classic["enc"]["params"] == modular["enc"]["params"] + modular["bb"]["params"]
    assert classic["bb"] == modular["bb"]  # the first stage's classic inverse is the modular component


def test_patch_embedding_flops_equal_a_hand_count(tiny_run):
    _, out = tiny_run
    data = _strict((out / "efficiency.json").read_text())
    # bb = the 16×16 stride-16 patch convolution 3 -> 768 on a 2×2 patch grid (+ adds, not counted)
    assert data["frozen_forward"]["bb"]["flops_per_image"] == 2 * (3 * 16 * 16) * 768 * (2 * 2)
    # enc = bb + 12 blocks on 5 tokens (4 patches + class token), width 768: per block the qkv,
    # projection and two MLP matrices (3d + d + 4d + 4d outputs of d inputs per token) and the two
    # attention products (scores and weighted values: 2·tokens²·d each, over all heads)
    tokens, d = 5, 768
    block = 2 * tokens * d * (3 * d + d + 4 * d + 4 * d) + 2 * (2 * tokens * tokens * d)
    assert data["frozen_forward"]["enc"]["flops_per_image"] == 2 * (3 * 16 * 16) * 768 * 4 + 12 * block


def test_totals_add_up(tiny_run):
    _, out = tiny_run
    data = _strict((out / "efficiency.json").read_text())
    totals, modular, classic, frozen = data["totals"], data["modular"], data["classic"], data["frozen_forward"]
    assert totals["modular"]["params"] == modular["bb"]["params"] + modular["enc"]["params"]
    assert totals["modular"]["train_flops_per_image"] == pytest.approx(
        modular["bb"]["train_flops_per_image"] + modular["enc"]["train_flops_per_image"])
    assert totals["modular"]["flops_per_image"] == pytest.approx(
        totals["modular"]["train_flops_per_image"] + frozen["enc"]["flops_per_image"])  # one frozen forward
    assert totals["classic"]["flops_per_image"] == pytest.approx(
        classic["bb"]["train_flops_per_image"] + classic["enc"]["train_flops_per_image"]
        + frozen["bb"]["flops_per_image"] + frozen["enc"]["flops_per_image"])  # one per classic path
    assert totals["classic"]["seconds_per_step"] == pytest.approx(
        totals["classic"]["train_seconds_per_step"] + frozen["bb"]["seconds_per_step"]
        + frozen["enc"]["seconds_per_step"])
    assert totals["classic"]["frozen_forward_passes"] == 2 and totals["modular"]["frozen_forward_passes"] == 1
    assert totals["classic_over_modular"]["params"] > 1


def test_bad_requests_are_one_sentence_errors(tiny_run, capsys):
    rc, out = tiny_run
    model = modinv.load_model("vit-b16", weights="random", input_size=(32, 32))
    with pytest.raises(ModinvError, match="unknown stage"):
        measure_efficiency(model, stages=["nope"])
    with pytest.raises(ModinvError, match="at least 1"):
        measure_efficiency(model, batch=0)
    assert main(["efficiency", "--model", "no-such-model", "--out", str(out)]) == 2
    assert "unknown model" in capsys.readouterr().err
