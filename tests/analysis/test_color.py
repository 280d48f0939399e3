"""The color analysis: the six filters (checked in float HSV), the pairwise MSE, robustness plumbing, the CLI."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray, rgb2hsv

import modinv
import modinv.analysis
import modinv.cli
from modinv.analysis.color import (
    FILTERS,
    HUE_SET,
    HUE_SHIFT,
    apply_filter,
    color_robustness,
    pairwise_mse,
    perturbations,
)
from modinv.analysis.metrics import per_image_mse
from modinv.errors import ModinvError

DETR_SIZE = (32, 64)


def colorful(h: int = 12, w: int = 16, b: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random saturated-ish colors, float32 in [0, 1] (3×H×W or B×3×H×W)."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, h, w) if b is None else (b, 3, h, w)
    return torch.rand(shape, generator=g)


def box_mask(h: int = 12, w: int = 16) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[2:9, 3:11] = True
    return mask


def hsv(image: torch.Tensor) -> np.ndarray:
    return rgb2hsv(image.double().permute(1, 2, 0).numpy())


def hue_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


@pytest.mark.parametrize("name", [f for f in FILTERS if f != "grayscale"])
def test_hue_filters_inside_mask_keep_saturation_and_value_and_leave_outside_untouched(name):
    image, mask = colorful(), box_mask()
    out = apply_filter(image, name, mask)
    assert isinstance(out, torch.Tensor) and out.dtype == image.dtype and out.shape == image.shape
    assert torch.equal(out[:, ~mask], image[:, ~mask])  # bit for bit outside
    before, after = hsv(image)[mask.numpy()], hsv(out)[mask.numpy()]
    colored = before[:, 1] > 0.05  # hue is defined
    assert colored.sum() > 50
    np.testing.assert_allclose(after[:, 1], before[:, 1], atol=1e-5)  # saturation kept
    np.testing.assert_allclose(after[:, 2], before[:, 2], atol=1e-6)  # value kept
    if name in HUE_SET:
        target = np.full(colored.sum(), HUE_SET[name] / 360.0)
    else:
        target = (before[colored, 0] + HUE_SHIFT[name] / 360.0) % 1.0
    assert hue_distance(after[colored, 0], target).max() < 1e-5
    assert not torch.equal(out[:, mask], image[:, mask])


def test_hue_filter_without_mask_filters_every_pixel_and_keeps_grays():
    image = colorful()
    image[:, 0, :] = 0.4  # a gray row has no hue: unchanged
    out = apply_filter(image, "green")
    h = hsv(out)
    colored = hsv(image)[..., 1] > 0.05
    assert hue_distance(h[colored, 0], np.full(colored.sum(), 1 / 3)).max() < 1e-5
    torch.testing.assert_close(out[:, 0, :], image[:, 0, :], atol=1e-7, rtol=0)


def test_grayscale_is_rec709_luminance_replicated():
    image = colorful()
    out = apply_filter(image, "grayscale")
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    r, g, b = image.double()
    luminance = 0.2125 * r + 0.7154 * g + 0.0721 * b
    torch.testing.assert_close(out[0].double(), luminance, atol=1e-6, rtol=0)
    expected = rgb2gray(image.double().permute(1, 2, 0).numpy())
    np.testing.assert_allclose(out[0].double().numpy(), expected, atol=1e-6)
    # perturbations() put grayscale on the whole image, the hue filters inside the mask only
    mask = box_mask()
    versions = perturbations(image, mask)
    assert versions.shape == (len(FILTERS), 3, 12, 16)
    torch.testing.assert_close(versions[FILTERS.index("grayscale")], out)
    assert torch.equal(versions[FILTERS.index("red")][:, ~mask], image[:, ~mask])


def test_apply_filter_numpy_batches_and_channel_last():
    batch = colorful(b=2)
    masks = torch.stack([box_mask(), ~box_mask()])
    out = apply_filter(batch, "blue", masks)
    for i in range(2):
        torch.testing.assert_close(out[i], apply_filter(batch[i], "blue", masks[i]))
    array = batch[0].numpy()
    out_np = apply_filter(array, "shift240", box_mask().numpy())
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32 and out_np.shape == array.shape
    np.testing.assert_array_equal(out_np, apply_filter(batch[0], "shift240", box_mask()).numpy())
    hwc = np.moveaxis(array, 0, -1)
    np.testing.assert_array_equal(np.moveaxis(apply_filter(hwc, "red", channel_axis=-1), -1, 0),
                                  apply_filter(array, "red"))
    with pytest.raises(ModinvError, match="unknown color filter"):
        apply_filter(batch, "purple")
    with pytest.raises(ModinvError, match="mask"):
        apply_filter(batch[0], "red", torch.ones(5, 5, dtype=torch.bool))


def test_pairwise_mse_matches_hand_computation():
    # three versions of one 1×1 two-image batch... values chosen to be checked by hand
    a, b, c = (torch.full((2, 3, 1, 2), v) for v in (0.0, 0.5, 1.0))
    c[1] = 0.0  # second image: versions 0, 0.5, 0
    # image 0: pairs (0,.5)->.25, (0,1)->1, (.5,1)->.25 : mean .5 ; image 1: .25, 0, .25 : mean 1/6
    torch.testing.assert_close(pairwise_mse([a, b, c]), torch.tensor([0.5, 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(pairwise_mse(torch.stack([a, b, c])), torch.tensor([0.5, 1 / 6], dtype=torch.float64))
    single = pairwise_mse(torch.stack([a[0], b[0], c[0]]))  # K×3×H×W -> one value
    assert single.ndim == 0 and abs(float(single) - 0.5) < 1e-12
    # general definition: mean over the 15 unordered pairs of the per-image MSE
    versions = [colorful(b=3, seed=s) for s in range(6)]
    pairs = [per_image_mse(versions[i], versions[j]).double() for i in range(6) for j in range(i + 1, 6)]
    assert len(pairs) == 15
    torch.testing.assert_close(pairwise_mse(versions), torch.stack(pairs).mean(0))
    with pytest.raises(ModinvError):
        pairwise_mse([a])


def test_robustness_runs_each_full_image_filter_and_none(monkeypatch):
    calls = []
    image = colorful(b=1)

    def detection_ap(model, source, batch_size, transform=None, limit=None):
        out = image if transform is None else transform(image)
        calls.append((transform, out))
        return {"AP": float(out.mean()), "AP50": 0.0}

    def classification_top1(model, source, batch_size, transform=None, limit=None):
        return {"top1": 0.5}

    fake = types.SimpleNamespace(detection_ap=detection_ap, classification_top1=classification_top1)
    monkeypatch.setitem(sys.modules, "modinv.analysis.task", fake)
    monkeypatch.setattr(modinv.analysis, "task", fake, raising=False)
    detr = types.SimpleNamespace(name="detr-r50")
    result = color_robustness(detr, source=None, batch_size=2, limit=3)
    assert result["task"] == "detection" and result["metric"] == "AP"
    assert list(result["scores"]) == ["none", *FILTERS]
    assert calls[0][0] is None
    for (_, out), name in zip(calls[1:], FILTERS):
        torch.testing.assert_close(out, apply_filter(image, name))  # whole image, no mask
    vit = types.SimpleNamespace(name="vit-b16")
    assert color_robustness(vit, source=None)["scores"]["grayscale"] == 0.5
    with pytest.raises(ModinvError, match="class-labelled"):
        color_robustness(vit, source=types.SimpleNamespace(kind="coco"))


# -- the CLI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detr():
    return modinv.load_model("detr-r50", weights="random", input_size=DETR_SIZE)


@pytest.fixture(scope="module")
def setup(detr, tmp_path_factory):
    from modinv.data.synthetic import make_tiny_coco

    root = tmp_path_factory.mktemp("color")
    coco = make_tiny_coco(root / "coco", n_images=3, size=(48, 64))
    chain = modinv.InverseChain.build(detr, variants={"bb": "local"}, seed=0)
    chain.save(root / "chain")
    return root, coco


def register_analyze(monkeypatch, name):
    """Register ``modinv analyze`` with just the analysis under test (the others may not exist yet)."""
    import modinv.cli.analyze as analyze

    monkeypatch.setitem(modinv.cli.COMMANDS, "analyze", "analyze")
    monkeypatch.setattr(analyze, "ANALYSES", {name: analyze.ANALYSES.get(name, name)})


def cached_models(monkeypatch, model):
    """The CLI's model loading, answered from the already loaded test model when it matches."""
    import modinv.cli.common as common

    real = common.load_model

    def load(name, weights="pretrained", seed=0, device=None, **options):
        if name == model.name and weights == "random" and tuple(options.get("input_size", ())) == model.input_size:
            return model
        return real(name, weights=weights, seed=seed, device=device, **options)

    monkeypatch.setattr(common, "load_model", load)


def test_color_cli_writes_figures_and_json(setup, detr, monkeypatch, capsys):
    root, coco = setup
    register_analyze(monkeypatch, "color")
    cached_models(monkeypatch, detr)

    def detection_ap(model, source, batch_size, transform=None, limit=None):
        return {"AP": 0.1 if transform is None else 0.05}

    fake = types.SimpleNamespace(detection_ap=detection_ap, classification_top1=None)
    monkeypatch.setitem(sys.modules, "modinv.analysis.task", fake)
    monkeypatch.setattr(modinv.analysis, "task", fake, raising=False)
    out = root / "out"
    rc = modinv.cli.main([
        "analyze", "color", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, DETR_SIZE), "--inverse", str(root / "chain"), "--data", f"coco:{coco}",
        "--out", str(out), "--batch", "12", "--categories", "cat", "47", "--limit", "2", "--amp", "off", "--robustness",
    ])
    assert rc == 0, capsys.readouterr().err
    for name in ("color.png", "color_pairwise.png", "color_robustness.png"):
        assert (out / name).stat().st_size > 1000
    result = json.loads((out / "color.json").read_text())
    for key in ("filters", "stages", "pairwise_mse", "per_category", "units", "n_units", "n_images", "ci",
                "grayscale", "robustness", "figures", "examples"):
        assert key in result
    assert result["filters"] == list(FILTERS) and result["stages"] == ["bb", "enc", "dec", "pred"]
    # image 1 holds a person only (not chosen), image 2 the cat; the cup (id 47) is in image 3, past --limit
    assert result["n_units"] == 1 and set(result["per_category"]) == {"cat"} and result["n_images"] == 2
    assert result["skipped"]["images_without_units"] == 1 and result["categories"] == {"17": "cat", "47": "cup"}
    assert set(result["pairwise_mse"]) == {"input", "bb", "enc", "dec", "pred"}
    for summary in result["pairwise_mse"].values():
        assert set(summary) >= {"mse", "ci95", "n", "std"} and summary["n"] == 1
    assert result["pairwise_mse"]["input"]["mse"] > 1e-3  # the filters do change the input
    assert result["robustness"]["scores"] == {"none": 0.1, **{f: 0.05 for f in FILTERS}}
    # a second model's color.json plotted beside it
    rc = modinv.cli.main([
        "analyze", "color", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, DETR_SIZE), "--inverse", str(root / "chain"), "--data", f"coco:{coco}",
        "--out", str(root / "out2"), "--limit", "1", "--examples", "0", "--filters", "red", "grayscale",
        "--label", "other", "--compare", str(out / "color.json"), "--amp", "off",
    ])
    assert rc == 0, capsys.readouterr().err
    second = json.loads((root / "out2" / "color.json").read_text())
    assert list(second["compare"]) == ["detr-r50"] and second["n_units"] == 1
    assert (root / "out2" / "color.png").stat().st_size > 1000
    rc = modinv.cli.main([
        "analyze", "color", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, DETR_SIZE), "--inverse", str(root / "chain"), "--data", f"coco:{coco}",
        "--out", str(root / "out3"), "--categories", "giraffe",
    ])
    assert rc == 2 and "unknown COCO category 'giraffe'" in capsys.readouterr().err


def test_robustness_with_the_real_detection_ap(setup, detr):
    from modinv.data import open_source

    _, coco = setup
    source = open_source(f"coco:{coco}", size=detr.input_size)
    result = color_robustness(detr, source, filters=("grayscale",), batch_size=2, limit=1)
    assert result["metric"] == "AP" and list(result["scores"]) == ["none", "grayscale"]
    assert result["details"]["grayscale"]["n_images"] == 1
    assert all(v is None or 0.0 <= v <= 1.0 for v in result["scores"].values())
