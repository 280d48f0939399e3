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
from modinv.analysis.color import color_robustness
from modinv.analysis.color_filters import FILTERS, HUE_SET, HUE_SHIFT, apply_filter, pairwise_mse, perturbations
from modinv.errors import ModinvError
from modinv.metrics import per_image_mse
from modinv.models.base import ModelMeta


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

    def detection_ap(model, source, batch_size, transform=None, limit=None, amp="off"):
        out = image if transform is None else transform(image)
        calls.append((transform, out))
        assert amp == "off"  # float32 unless asked otherwise
        return {"AP": float(out.mean()), "AP50": 0.0}

    def classification_top1(model, source, batch_size, transform=None, limit=None, amp="off"):
        return {"top1": 0.5}

    fake = types.SimpleNamespace(detection_ap=detection_ap, classification_top1=classification_top1)
    monkeypatch.setitem(sys.modules, "modinv.analysis.task", fake)
    monkeypatch.setattr(modinv.analysis, "task", fake, raising=False)
    cpu = torch.device("cpu")
    detr = types.SimpleNamespace(name="detr-r50", meta=ModelMeta(task="detection"), device=cpu)
    result = color_robustness(detr, source=None, batch_size=2, limit=3)
    assert result.task == "detection" and result.metric == "AP" and result.precision == "float32"
    assert list(result.scores) == ["none", *FILTERS]
    assert calls[0][0] is None
    for (_, out), name in zip(calls[1:], FILTERS):
        torch.testing.assert_close(out, apply_filter(image, name))  # whole image, no mask
    vit = types.SimpleNamespace(name="vit-b16", meta=ModelMeta(task="classification"), device=cpu)
    assert color_robustness(vit, source=None).scores["grayscale"] == 0.5
    with pytest.raises(ModinvError, match="class-labelled"):
        color_robustness(vit, source=types.SimpleNamespace(kind="coco"))
    # the task is the model's declared one, never guessed from its name
    with pytest.raises(ModinvError, match="needs a task .detection or classification. with a task metric; .* declares none"):
        color_robustness(types.SimpleNamespace(name="detr-r50", meta=ModelMeta(), device=cpu), source=None)


# -- the CLI -------------------------------------------------------------------------------------------

def strict_json(name: str):
    raise AssertionError(f"color.json holds {name}: not strict JSON")


def color_argv(detr, chain, coco, out, *extra: str) -> list[str]:
    return ["--model", "detr-r50", "--weights", "random", "--device", "cpu",
            "--input-size", *map(str, detr.input_size), "--inverse", str(chain), "--data", f"coco:{coco}",
            "--out", str(out), *extra]


def test_color_cli_writes_figures_and_json(main, detr, chains, tiny_coco, tmp_path, monkeypatch, capsys):
    def detection_ap(model, source, batch_size, transform=None, limit=None, amp="off"):
        return {"AP": 0.1 if transform is None else 0.05}

    fake = types.SimpleNamespace(detection_ap=detection_ap, classification_top1=None)
    monkeypatch.setitem(sys.modules, "modinv.analysis.task", fake)
    monkeypatch.setattr(modinv.analysis, "task", fake, raising=False)
    out = tmp_path / "out"
    rc = main("color", *color_argv(detr, chains["detr"], tiny_coco, out, "--batch", "12", "--categories", "cat", "47",
                                   "--limit", "2", "--amp", "off", "--robustness"))
    assert rc == 0, capsys.readouterr().err
    for name in ("color.png", "color_pairwise.png", "color_robustness.png"):
        assert (out / name).stat().st_size > 1000
    result = json.loads((out / "color.json").read_text(), parse_constant=strict_json)
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
    assert result["figure"] == "color.png" and result["figures"]["robustness"] == "color_robustness.png"
    assert result["precision"] == result["robustness"]["precision"] == "float32"
    # a second model's color.json plotted beside it
    rc = main("color", *color_argv(detr, chains["detr"], tiny_coco, tmp_path / "out2", "--limit", "1",
                                   "--examples", "0", "--filters", "red", "grayscale", "--label", "other",
                                   "--compare", str(out / "color.json"), "--amp", "off"))
    assert rc == 0, capsys.readouterr().err
    second = json.loads((tmp_path / "out2" / "color.json").read_text())
    assert list(second["compare"]) == ["detr-r50"] and second["n_units"] == 1
    assert (tmp_path / "out2" / "color.png").stat().st_size > 1000
    rc = main("color", *color_argv(detr, chains["detr"], tiny_coco, tmp_path / "out3", "--categories", "giraffe"))
    assert rc == 2 and "unknown COCO category 'giraffe'" in capsys.readouterr().err


def test_robustness_with_the_real_detection_ap(detr, tiny_coco):
    from modinv.data import open_source

    source = open_source(f"coco:{tiny_coco}", size=detr.input_size)
    result = color_robustness(detr, source, filters=("grayscale",), batch_size=2, limit=1)
    assert result.metric == "AP" and list(result.scores) == ["none", "grayscale"]
    assert result.details["grayscale"]["n_images"] == 1
    assert all(v is None or 0.0 <= v <= 1.0 for v in result.scores.values())


TENCH, TABBY = "n01440764", "n02123045"  # ImageNet-1k classes 0 and 281; sorted folder positions 0 and 1


def _colour_classifier(size=(32, 32)):
    """A classifier that calls red images tench (0) and blue ones tabby (281): a stride-2 average
    conv (the stage ``conv``), global average, logit 0 = red, logit 281 = blue, every other 0."""
    from torch import nn

    from modinv.models import from_module

    net = nn.Sequential(nn.Conv2d(3, 3, 2, stride=2, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(3, 1000))
    with torch.no_grad():
        net[0].weight.zero_()
        for c in range(3):
            net[0].weight[c, c] = 0.25
        net[3].weight.zero_()
        net[3].bias.zero_()
        net[3].weight[0, 0] = net[3].weight[281, 2] = 1.0
    return from_module(net, {"conv": "0"}, input_size=size, name="colour-classifier", task="classification")


def test_robustness_top1_uses_the_imagenet_indices_of_synset_folders(main, coco, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from modinv.analysis.color_filters import image_filter
    from modinv.data import open_source

    model = _colour_classifier()
    monkeypatch.setattr(modinv.cli.common, "load_model", lambda name, **kw: model)
    chain = modinv.InverseChain.build(model, arch="auto", seed=0).save(tmp_path / "chain")
    folder = tmp_path / "imagenet"
    for synset, rgb in ((TENCH, (230, 20, 20)), (TABBY, (20, 20, 230))):
        (folder / synset).mkdir(parents=True)
        Image.new("RGB", (40, 30), rgb).save(folder / synset / f"{synset}_0.png")
    out = tmp_path / "out"
    rc = main("color", "--model", "colour-classifier", "--weights", "random", "--device", "cpu", "--input-size", "32",
              "32", "--inverse", str(chain), "--data", f"coco:{coco}", "--out", str(out), "--limit", "2",
              "--examples", "0", "--filters", "red", "blue", "grayscale", "--robustness", "--robustness-data",
              f"imagenet:{folder}")
    assert rc == 0, capsys.readouterr().err
    robustness = json.loads((out / "color.json").read_text())["robustness"]
    assert robustness["label_map"] == "imagenet"
    # by hand: labels 0 (tench, red) and 281 (tabby, blue); the model's arg-max on each filtered image
    images = torch.stack([item["image"] for item in open_source(f"imagenet:{folder}", size=(32, 32))])
    labels = torch.tensor([0, 281])
    with torch.no_grad():
        for name in ("none", "red", "blue", "grayscale"):
            seen = images if name == "none" else image_filter(name)(images)
            top1 = float((model.output(model.trace(seen)).argmax(-1) == labels).float().mean())
            assert robustness["scores"][name] == top1, name
    assert robustness["scores"]["none"] == 1.0  # sorted-folder labels (0, 1) would give 0.5
    assert robustness["details"]["none"]["n"] == 2
