"""evaluate_chain (modinv.analysis.evaluate): the per-stage MSE and the mean-image baseline against a
hand computation on a tiny data set whose reconstructions are known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modinv.analysis.evaluate import evaluate_chain, mean_image
from modinv.inverse.chain import InverseChain
from modinv.inverse.storage import model_layout
from modinv.models import from_module

SIZE = (4, 6)


class _Affine(nn.Module):
    """y = scale·x + shift: a component whose reconstructions are known by hand."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale, self.shift = scale, shift
        self.config = {"kind": "test.evaluate_affine", "scale": scale, "shift": shift}

    def forward(self, x, context=None):
        return self.scale * x + self.shift


@pytest.fixture(scope="module")
def identity_model():
    """Two stages that are the image itself (a = b = x), no normalisation."""
    return from_module(nn.Sequential(nn.Identity(), nn.Identity()), {"a": "0", "b": "1"}, input_size=SIZE,
                       name="identity")


def _data(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": 0.9 * torch.rand(3, *SIZE, generator=g), "index": i, "name": f"img{i}"} for i in range(n)]


def test_per_stage_mse_and_mean_image_baseline_equal_a_hand_computation(identity_model):
    # a⁻¹: x + 0.1 ; b⁻¹: 0.5 x. From a: x + 0.1 (error 0.01 per pixel); from b: 0.5 x + 0.1.
    chain = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_model))
    data = _data(3)
    images = torch.stack([d["image"] for d in data]).double()
    result = evaluate_chain(identity_model, chain, data, batch_size=2, progress=False)  # batches of 2 and 1
    hand_a = torch.full((3,), 0.01, dtype=torch.float64)
    hand_b = (0.5 * images + 0.1 - images).pow(2).mean((1, 2, 3))
    mean = images.mean(0)
    hand_baseline = (images - mean).pow(2).mean((1, 2, 3))
    assert list(result["stages"]) == ["a", "b"] and result["n_images"] == 3
    assert result["stages"]["a"]["mse"] == pytest.approx(float(hand_a.mean()), rel=1e-6)
    assert result["stages"]["b"]["mse"] == pytest.approx(float(hand_b.mean()), rel=1e-6)
    assert result["mean_image_baseline"]["mse"] == pytest.approx(float(hand_baseline.mean()), rel=1e-6)
    assert result["stages"]["b"]["n"] == result["mean_image_baseline"]["n"] == 3
    assert result["precision"] == "float32" and result["pixel_space"] == "[0, 1]"
    torch.testing.assert_close(mean_image(data, batch_size=2).double(), mean, atol=1e-7, rtol=0)
    # --limit: the first two images only, the mean image of those two
    two = evaluate_chain(identity_model, chain, data, batch_size=2, limit=2, progress=False)
    mean2 = images[:2].mean(0)
    assert two["n_images"] == 2
    assert two["stages"]["b"]["mse"] == pytest.approx(float(hand_b[:2].mean()), rel=1e-6)
    assert two["mean_image_baseline"]["mse"] == pytest.approx(float((images[:2] - mean2).pow(2).mean()), rel=1e-6)
