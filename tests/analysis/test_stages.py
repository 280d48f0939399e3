"""The stages analysis: per-stage MSE with 95% CI and the mean-image baseline, side by side (Fig. 4 left)."""

from __future__ import annotations

import json

import pytest

import modinv
import modinv.cli
from modinv.analysis.stages import load_results, plot_stage_errors, stage_errors, stage_order
from modinv.errors import ModinvError

DETR_SIZE = (32, 64)


def summary(mse: float) -> dict:
    return {"mse": mse, "ci95": [mse * 0.9, mse * 1.1], "n": 4, "std": mse / 10}


def fake_result(model: str, stages: list[str]) -> dict:
    return {"stages": {s: summary(0.01 * (i + 1)) for i, s in enumerate(stages)},
            "mean_image_baseline": summary(0.05), "n_images": 4, "model": model, "weights": "x"}


def test_stage_order_merges_the_models_stages_in_processing_order():
    results = {"detr": fake_result("detr-r50", ["bb", "enc", "dec", "pred"]),
               "vit": fake_result("vit-b16", ["bb", "enc"]),
               "mnet": fake_result("mobilenet-v2", ["s4", "s8"])}
    assert stage_order(results) == ["bb", "enc", "dec", "pred", "s4", "s8"]


def test_plot_and_load_results(tmp_path):
    results = {"detr": fake_result("detr-r50", ["bb", "enc", "dec", "pred"]),
               "vit": fake_result("vit-b16", ["bb", "enc"])}
    path = plot_stage_errors(results, tmp_path / "f.png")
    assert path.stat().st_size > 1000
    (tmp_path / "eval.json").write_text(json.dumps(results["vit"] | {"label": "ViT-B/16"}))
    assert list(load_results(tmp_path / "eval.json")) == ["ViT-B/16"]
    (tmp_path / "stages.json").write_text(json.dumps({"results": results}))
    assert list(load_results(tmp_path / "stages.json")) == ["detr", "vit"]
    (tmp_path / "bad.json").write_text(json.dumps({"stages": 3}))
    with pytest.raises(ModinvError, match="not a per-stage evaluation"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(ModinvError, match="does not exist"):
        load_results(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def detr():
    return modinv.load_model("detr-r50", weights="random", input_size=DETR_SIZE)


def test_stages_function_and_cli(detr, tmp_path, monkeypatch, capsys):
    import modinv.cli.analyze as analyze
    import modinv.cli.common as common
    from modinv.data import open_source
    from modinv.data.synthetic import make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=1, size=(24, 40))
    chain = modinv.InverseChain.build(detr, variants={"bb": "local"}, stages=["bb", "enc"], seed=0).eval()
    source = open_source(f"folder:{folder}", size=detr.input_size)
    result = stage_errors(detr, chain, source, stages=["bb"], batch_size=2, limit=1, progress=False, label="mine")
    assert list(result["stages"]) == ["bb"] and result["n_images"] == 1 and result["label"] == "mine"
    assert result["mean_image_baseline"]["n"] == 1
    chain.save(tmp_path / "chain")
    (tmp_path / "vit.json").write_text(json.dumps(fake_result("vit-b16", ["bb", "enc"])))

    monkeypatch.setitem(modinv.cli.COMMANDS, "analyze", "analyze")
    monkeypatch.setattr(analyze, "ANALYSES", {"stages": "stages"})  # the other analyses may not exist yet
    monkeypatch.setattr(common, "load_model", lambda *a, **k: detr)  # already loaded: same model, same size
    out = tmp_path / "out"
    rc = modinv.cli.main([
        "analyze", "stages", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, DETR_SIZE), "--inverse", str(tmp_path / "chain"), "--data", f"folder:{folder}",
        "--out", str(out), "--batch", "2", "--limit", "2", "--amp", "off", "--compare", str(tmp_path / "vit.json"),
    ])
    assert rc == 0, capsys.readouterr().err
    assert (out / "stages.png").stat().st_size > 1000
    saved = json.loads((out / "stages.json").read_text())
    assert saved["order"] == ["detr-r50", "vit-b16"] and saved["stage_order"] == ["bb", "enc"]
    assert set(saved) >= {"analysis", "results", "order", "stage_order", "pixel_space", "ci", "figure"}
    mine = saved["results"]["detr-r50"]
    assert mine["n_images"] == 2 and set(mine["stages"]["enc"]) >= {"mse", "ci95", "n", "std"}
    assert mine["inverse"] == str(tmp_path / "chain")
    rc = modinv.cli.main([
        "analyze", "stages", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, DETR_SIZE), "--inverse", str(tmp_path / "chain"), "--data", f"folder:{folder}",
        "--out", str(out), "--compare", str(tmp_path / "nothing.json"),
    ])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
