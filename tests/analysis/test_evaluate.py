"""evaluate_chain (modinv.analysis.evaluate): the per-stage MSE and the mean-image baseline against a
hand computation on a tiny data set whose reconstructions are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modinv.analysis.evaluate import evaluate_chain, evaluate_chains, mean_image
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


def test_several_chains_share_one_frozen_forward_per_batch(identity_model, monkeypatch):
    """Two chains on 3 images in batches of 2: two forwards (one per batch), each result equal to
    the chain evaluated alone, the baseline the same for both."""
    first = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_model))
    second = InverseChain({"a": _Affine(0.8, 0.0)}, model_layout(identity_model))
    data = _data(3)
    alone = {"first": evaluate_chain(identity_model, first, data, batch_size=2, progress=False),
             "second": evaluate_chain(identity_model, second, data, batch_size=2, progress=False)}
    traced = []
    original = identity_model.trace
    monkeypatch.setattr(identity_model, "trace", lambda images, end=None: traced.append(1) or original(images, end))
    both = evaluate_chains(identity_model, {"first": first, "second": second}, data, batch_size=2, progress=False)
    assert len(traced) == 2
    assert list(both["first"]["stages"]) == ["a", "b"] and list(both["second"]["stages"]) == ["a"]
    assert both == alone


# -- every metric, and intervals that stay in range (issue 13 item 2, issue 14 item 7) -----------------

class _Constant(nn.Module):
    """Every reconstruction is the flat grey image 0.5."""

    config = {"kind": "test.evaluate_constant"}

    def forward(self, x, context=None):
        return torch.full_like(x, 0.5)


class _FakeLpipsNet(nn.Module):
    """Stands in for LPIPS' network: the mean absolute difference of each image pair."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # Lpips reads the device of the first parameter

    def forward(self, a, b, normalize=True):
        return (a - b).abs().flatten(1).mean(1)


def _flat_images(mse_values, size=(12, 16)) -> list[dict]:
    """Flat images whose per-image MSE against the grey 0.5 is ``mse_values`` exactly (x = 0.5 + √v)."""
    return [{"image": torch.full((3, *size), 0.5 + v ** 0.5), "index": i, "name": f"flat{i}"}
            for i, v in enumerate(mse_values)]


@pytest.fixture(scope="module")
def identity_12x16():
    return from_module(nn.Sequential(nn.Identity(), nn.Identity()), {"a": "0", "b": "1"}, input_size=(12, 16),
                       name="identity")


def test_a_skewed_mse_gets_an_interval_inside_0_1_and_the_json_names_it(identity_12x16, tmp_path):
    """The demo's case (issue 14 item 7): a few small MSEs and one large one, where the Student-t
    interval goes below 0."""
    import json

    from modinv.fileio import write_json
    from modinv.metrics import CI_METHODS, summarize

    values = [0.001, 0.002, 0.0015, 0.2]
    assert summarize(values)["ci95"][0] < 0  # the plain t interval leaves the range
    chain = InverseChain({"a": _Constant(), "b": _Affine(1.0, 0.0)}, model_layout(identity_12x16))
    result = evaluate_chain(identity_12x16, chain, _flat_images(values), stages=["a"], batch_size=3,
                            metrics=["mse"], progress=False)
    write_json(tmp_path / "e.json", result)
    saved = json.loads((tmp_path / "e.json").read_text())
    a = saved["stages"]["a"]
    assert a["mse"] == pytest.approx(sum(values) / 4, rel=1e-5) and a["mean"] == a["mse"]
    assert 0 <= a["ci95"][0] <= a["mse"] <= a["ci95"][1] <= 1
    assert a["ci_method"] in ("bca_bootstrap", "percentile_bootstrap") and a["range"] == [0.0, 1.0]
    assert saved["ci"]["methods"][a["ci_method"]] == CI_METHODS[a["ci_method"]]
    assert "lies inside the metric's range" in saved["ci"]["methods"][a["ci_method"]]
    assert saved["metrics"]["mse"]["stages"]["a"] == {k: v for k, v in a.items() if k != "mse"}


def test_every_metric_per_stage_and_for_the_baseline(identity_12x16):
    from modinv.metrics import Lpips, per_image_psnr, per_image_ssim

    g = torch.Generator().manual_seed(1)
    data = [{"image": 0.8 * torch.rand(3, 12, 16, generator=g), "index": i, "name": f"r{i}"} for i in range(3)]
    images = torch.stack([d["image"] for d in data])
    chain = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_12x16))
    lpips = Lpips(_FakeLpipsNet())
    result = evaluate_chain(identity_12x16, chain, data, batch_size=2, progress=False, lpips=lpips)
    assert list(result["metrics"]) == ["mse", "psnr", "ssim", "lpips"] and result["not_computed"] == {}
    assert set(result["metric_info"]) == set(result["metrics"])
    recon_b = 0.5 * images + 0.1
    metrics = result["metrics"]
    assert metrics["mse"]["stages"]["b"]["mean"] == result["stages"]["b"]["mse"]
    assert metrics["psnr"]["stages"]["b"]["mean"] == pytest.approx(float(per_image_psnr(recon_b, images).mean()),
                                                                   rel=1e-5)
    assert metrics["psnr"]["stages"]["a"]["mean"] == pytest.approx(20.0, rel=1e-4)  # MSE 0.01 everywhere: 20 dB
    assert metrics["ssim"]["stages"]["b"]["mean"] == pytest.approx(float(per_image_ssim(recon_b, images).mean()),
                                                                   rel=1e-5)
    hand_lpips = (recon_b - images).abs().flatten(1).mean(1)  # the fake network, inputs clamped to [0, 1]
    assert metrics["lpips"]["stages"]["b"]["mean"] == pytest.approx(float(hand_lpips.mean()), rel=1e-5)
    reference = images.mean(0, keepdim=True).expand_as(images)
    assert metrics["ssim"]["mean_image_baseline"]["mean"] == pytest.approx(
        float(per_image_ssim(reference.contiguous(), images).mean()), rel=1e-5)
    for name, per in metrics.items():  # every interval inside its metric's range
        low, high = result["metric_info"][name]["low"], result["metric_info"][name]["high"]
        for r in [*per["stages"].values(), per["mean_image_baseline"]]:
            assert low <= r["ci95"][0] <= r["mean"] <= r["ci95"][1] <= high, (name, r)
            assert r["n"] == 3


def test_selected_metrics_missing_lpips_and_small_images_are_reported(identity_model, identity_12x16):
    from modinv.analysis.evaluate import evaluation_lines

    chain = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_12x16))
    data = _flat_images([0.01, 0.04])
    only_psnr = evaluate_chain(identity_12x16, chain, data, metrics=["psnr"], progress=False)
    assert list(only_psnr["metrics"]) == ["psnr"] and only_psnr["not_computed"] == {}
    assert only_psnr["stages"]["a"]["mse"] == pytest.approx(0.01, rel=1e-5)  # "stages" stays the MSE
    assert not any(" MSE " in line for line in evaluation_lines(only_psnr))
    # LPIPS asked for without a network; SSIM on images smaller than its 11×11 window: one sentence each
    small = evaluate_chain(identity_model, InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)},
                                                       model_layout(identity_model)), _data(2), progress=False)
    assert list(small["metrics"]) == ["mse", "psnr"]
    assert small["not_computed"] == {"lpips": "no LPIPS network was loaded",
                                     "ssim": "the images (4×6 pixels) are smaller than SSIM's 11×11 window"}


def test_a_perfect_reconstruction_has_infinite_psnr_reported_as_such(identity_12x16, tmp_path):
    import json

    from modinv.analysis.evaluate import evaluation_lines
    from modinv.fileio import write_json

    chain = InverseChain({"a": _Affine(1.0, 0.0), "b": _Affine(1.0, 0.0)}, model_layout(identity_12x16))
    g = torch.Generator().manual_seed(2)
    data = [{"image": torch.rand(3, 12, 16, generator=g), "index": i, "name": f"r{i}"} for i in range(2)]
    result = evaluate_chain(identity_12x16, chain, data, metrics=["mse", "psnr", "ssim"], progress=False)
    psnr = result["metrics"]["psnr"]["stages"]["a"]
    assert psnr["n_infinite"] == 2 and psnr["mean"] == float("inf") and psnr["ci_method"] == "undefined"
    assert result["stages"]["a"]["mse"] == 0 and result["metrics"]["ssim"]["stages"]["a"]["mean"] == pytest.approx(1)
    assert "a        PSNR  inf dB (2 perfect reconstructions)  n=2" in evaluation_lines(result)
    write_json(tmp_path / "e.json", result)  # strict JSON: the infinite mean is written as null
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["psnr"]["stages"]["a"]["mean"] is None


def test_interval_record_names_the_methods_of_nested_summaries():
    from modinv.analysis.common import interval_record
    from modinv.metrics import CI_METHODS, summarize

    nested = {"a": [summarize([0.1, 0.3, 0.2], low=0, high=1)], "d": summarize([-1.0, 2.0, 0.5]),
              "one": summarize([0.4]), "text": "no summary here"}
    record = interval_record(nested, over="units")
    assert record["over"] == "units" and record["confidence"] == 0.95
    assert record["methods"] == {m: CI_METHODS[m] for m in ("bca_bootstrap", "student_t", "degenerate")}


def test_psnr_both_ways_are_named_apart_and_differ_as_jensen_says(identity_12x16):
    from modinv.metrics import per_image_psnr

    g = torch.Generator().manual_seed(2)
    data = [{"image": 0.8 * torch.rand(3, 12, 16, generator=g), "index": i, "name": f"r{i}"} for i in range(4)]
    images = torch.stack([d["image"] for d in data])
    chain = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_12x16))
    both = evaluate_chain(identity_12x16, chain, data, batch_size=2, progress=False)["psnr_both_ways"]
    recon_b = 0.5 * images + 0.1
    mean_mse = float(((recon_b - images) ** 2).flatten(1).mean(1).mean())
    assert both["psnr_of_mean_mse_db"]["b"] == pytest.approx(10 * math.log10(1 / mean_mse), rel=1e-5)
    assert both["mean_of_per_image_psnr_db"]["b"] == pytest.approx(float(per_image_psnr(recon_b, images).mean()),
                                                                   rel=1e-5)
    assert both["psnr_of_mean_mse_db"]["b"] < both["mean_of_per_image_psnr_db"]["b"]  # unequal errors: concave log
    assert both["psnr_of_mean_mse_db"]["a"] == pytest.approx(20.0, rel=1e-4)  # equal errors: the two agree
    assert both["mean_of_per_image_psnr_db"]["a"] == pytest.approx(20.0, rel=1e-4)
    assert set(both["psnr_of_mean_mse_db"]) == {"a", "b", "mean_image_baseline"}


def test_evaluate_returns_a_typed_result_that_is_still_the_mapping(identity_model):
    import json

    import modinv.analysis
    from modinv.analysis.evaluate import Evaluation

    chain = InverseChain({"a": _Affine(1.0, 0.1), "b": _Affine(0.5, 0.0)}, model_layout(identity_model))
    result = modinv.analysis.evaluate(identity_model, chain, _data(3), batch_size=2, progress=False,
                                      metrics=["mse", "psnr"])
    assert isinstance(result, Evaluation) and result.n_images == 3 and result.model == "identity"
    assert result.mean("a") == result["stages"]["a"]["mse"] == result.stages["a"]["mean"]
    assert result.mean("b", "psnr") == result.metrics["psnr"]["stages"]["b"]["mean"]
    with pytest.raises(Exception, match="ssim was not computed"):
        result.mean("a", "ssim")
    payload = result.to_json()
    assert next(iter(payload)) == "analysis" and payload["analysis"] == "evaluate"
    assert json.loads(json.dumps(payload, allow_nan=False))["n_images"] == 3


def test_every_analysis_is_exported_under_its_cli_name():
    import modinv.analysis as analysis
    from modinv.analysis.stages import stage_errors
    from modinv.analysis.tokens import token_noise_analysis
    from modinv.cli.analyze import ANALYSES

    for name in [*ANALYSES, "evaluate", "efficiency"]:
        assert callable(getattr(analysis, name)), name
    assert analysis.ANALYSES["stages"] is stage_errors and analysis.ANALYSES["tokens"] is token_noise_analysis
    assert analysis.stage_errors is stage_errors and analysis.evaluate.__analysis__ is evaluate_chain  # old names too
    from modinv.analysis import stages  # still the module, with everything in it

    assert stages.StageErrors and stages.stage_errors is stage_errors
