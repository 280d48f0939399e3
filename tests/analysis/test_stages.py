"""The stages analysis: per-stage MSE with 95% CI and the mean-image baseline, side by side (Fig. 4 left)."""

from __future__ import annotations

import json

import pytest

import modinv
from modinv.analysis.stages import (
    StageErrors, load_results, panel_metrics, stage_errors, stage_errors_figure, stage_errors_plot, stage_order,
)
from modinv.errors import ModinvError
from modinv.metrics import CI_METHODS


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
    path = stage_errors_figure(StageErrors.from_entries(results), tmp_path / "sub" / "f.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # written atomically: no temporary file left
    with pytest.raises(ModinvError, match="no results"):
        StageErrors.from_entries({})
    (tmp_path / "eval.json").write_text(json.dumps(results["vit"] | {"label": "ViT-B/16"}))
    assert list(load_results(tmp_path / "eval.json")) == ["ViT-B/16"]
    (tmp_path / "stages.json").write_text(json.dumps({"results": results}))
    assert list(load_results(tmp_path / "stages.json")) == ["detr", "vit"]
    (tmp_path / "bad.json").write_text(json.dumps({"stages": 3}))
    with pytest.raises(ModinvError, match="not a per-stage evaluation"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(ModinvError, match="does not exist"):
        load_results(tmp_path / "missing.json")


def test_one_figure_panel_per_metric_and_old_entries_in_the_mse_panel_only():
    import matplotlib.pyplot as plt

    old = fake_result("vit-b16", ["bb", "enc"])  # written before PSNR/SSIM/LPIPS: no "metrics"
    new = fake_result("detr-r50", ["bb", "enc"])
    new["metrics"] = {name: {"stages": {s: summary(v) for s, v in (("bb", 0.5), ("enc", 0.4))},
                             "mean_image_baseline": summary(0.3)} for name in ("ssim", "mse", "psnr")}
    new["metrics"]["psnr"]["stages"]["enc"] = {"mean": None, "ci95": [None, None], "n": 4, "n_infinite": 4,
                                              "ci_method": "undefined"}
    mixed = StageErrors.from_entries({"detr": new, "vit": old})
    assert mixed.metrics == panel_metrics(mixed.results) == ["mse", "psnr", "ssim"]  # canonical order
    fig = stage_errors_plot(mixed)
    try:
        assert [ax.get_ylabel().replace(",", " ").split()[0] for ax in fig.axes] == ["MSE", "PSNR", "SSIM"]
        assert fig.axes[1].get_ylabel() == "PSNR (dB), higher is better"
        lines = [len(ax.containers) for ax in fig.axes]  # error-bar groups: per entry a stage line + a baseline
        assert lines == [4, 2, 2]  # the old entry only in the MSE panel; an infinite PSNR point left out
    finally:
        plt.close(fig)
    only_old = StageErrors.from_entries({"vit": old})
    fig = stage_errors_plot(only_old)
    try:
        assert len(fig.axes) == 1 and only_old.metrics == ["mse"]
    finally:
        plt.close(fig)
    # summaries without a method (older JSON) used the Student-t interval
    assert mixed.to_json()["ci"]["methods"] == {m: CI_METHODS[m] for m in ("student_t", "undefined")}


def test_stages_function_and_cli(detr, main, tmp_path, capsys, monkeypatch):
    from modinv.data import open_source
    from modinv.data.synthetic import make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=1, size=(24, 40))
    chain = modinv.InverseChain.build(detr, arch="paper", variants={"bb": "local"}, stages=["bb", "enc"], seed=0).eval()
    source = open_source(f"folder:{folder}", size=detr.input_size)
    both = stage_errors(detr, chain, source, stages=["bb"], batch_size=2, limit=1, progress=False, label="mine")
    assert both.order == ["mine"] and both.stage_order == ["bb"] and set(both.to_json()) >= {"results", "analysis"}
    result = both.results["mine"]
    assert list(result["stages"]) == ["bb"] and result["n_images"] == 1 and result["label"] == "mine"
    assert result["mean_image_baseline"]["n"] == 1
    chain.save(tmp_path / "chain")
    (tmp_path / "vit.json").write_text(json.dumps(fake_result("vit-b16", ["bb", "enc"])))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no LPIPS backbone weights here
    out = tmp_path / "out"
    rc = main(
        "stages", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, detr.input_size), "--inverse", str(tmp_path / "chain"), "--data", f"folder:{folder}",
        "--out", str(out), "--batch", "2", "--limit", "2", "--amp", "off", "--compare", str(tmp_path / "vit.json"),
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "  bb       MSE " in printed.out and "(95% CI [" in printed.out and "(mean image)" in printed.out
    assert "  enc      PSNR " in printed.out and "  mean     SSIM " in printed.out
    assert printed.out.count("LPIPS not computed: the alexnet backbone weights are not in the local torch cache") == 1
    assert (out / "stages.png").stat().st_size > 1000
    saved = json.loads((out / "stages.json").read_text())
    assert saved["order"] == ["detr-r50", "vit-b16"] and saved["stage_order"] == ["bb", "enc"]
    assert set(saved) >= {"analysis", "results", "order", "stage_order", "pixel_space", "ci", "figure"}
    mine = saved["results"]["detr-r50"]
    assert mine["n_images"] == 2 and set(mine["stages"]["enc"]) >= {"mse", "ci95", "n", "std"}
    assert mine["inverse"] == str(tmp_path / "chain")
    assert saved["metrics"] == ["mse", "psnr", "ssim"] and list(mine["metrics"]) == ["mse", "psnr", "ssim"]
    assert "lpips" in mine["not_computed"] and "vit-b16" in saved["results"]  # the old entry: MSE only
    assert saved["ci"]["methods"].keys() >= {"bca_bootstrap", "student_t"}
    rc = main(
        "stages", "--model", "detr-r50", "--weights", "random", "--device", "cpu",
        "--input-size", *map(str, detr.input_size), "--inverse", str(tmp_path / "chain"), "--data", f"folder:{folder}",
        "--out", str(out), "--compare", str(tmp_path / "nothing.json"),
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main("stages", "--model", "detr-r50", "--inverse", "C", "--data", "D", "--out", str(out), "--metrics", "nosuch")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "modinv analyze stages: error: argument --metrics: unknown metric(s) nosuch; choose from mse, psnr, ssim, lpips")


def test_evaluate_and_analyze_stages_give_the_same_float32_numbers(vit, chains, main, tmp_path, monkeypatch, capsys):
    import modinv.cli
    import modinv.runtime

    # a bf16-capable machine: a reporting command that defaulted to "auto" would compute in bf16 here
    monkeypatch.setattr(modinv.runtime, "cpu_supports_bf16", lambda: True)
    common = ["--model", "vit-b16", "--weights", "random", "--device", "cpu", "--input-size",
              *map(str, vit.input_size), "--inverse", str(chains["vit"]), "--data", "samples", "--batch", "2",
              "--limit", "3"]
    assert modinv.cli.main(["evaluate", *common, "--out", str(tmp_path / "evaluate.json")]) == 0, capsys.readouterr().err
    assert main("stages", *common, "--out", str(tmp_path / "stages")) == 0, capsys.readouterr().err
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    staged = json.loads((tmp_path / "stages" / "stages.json").read_text())
    entry = staged["results"]["vit-b16"]
    assert evaluated["precision"] == entry["precision"] == staged["precision"] == "float32"
    assert list(evaluated["stages"]) == ["bb", "enc"] and evaluated["n_images"] == entry["n_images"] == 3
    assert entry["stages"] == evaluated["stages"]  # identical numbers, bit for bit
    assert entry["mean_image_baseline"] == evaluated["mean_image_baseline"]
    assert {"psnr", "ssim"} <= set(evaluated["metrics"])
    for name in ("mse", "psnr", "ssim"):  # every metric, with its interval, identical too
        assert entry["metrics"][name] == evaluated["metrics"][name]
    assert entry["not_computed"] == evaluated["not_computed"] and entry["ci"] == evaluated["ci"]
    # bf16 only when asked for, and then recorded (and different)
    assert main("stages", *common, "--amp", "bf16", "--out", str(tmp_path / "bf16")) == 0, capsys.readouterr().err
    bf16 = json.loads((tmp_path / "bf16" / "stages.json").read_text())["results"]["vit-b16"]
    assert bf16["precision"] == "bfloat16 autocast"
    assert bf16["stages"]["enc"]["mse"] != evaluated["stages"]["enc"]["mse"]


@pytest.mark.parametrize("command", [["evaluate"], ["reconstruct"], ["eval-task"]]
                         + [["analyze", name] for name in ("stages", "color", "structure", "tokens", "errors", "layers")])
def test_every_reporting_command_computes_in_float32_unless_asked(command):
    import modinv.cli

    parser = modinv.cli.build_parser()
    required = {"evaluate": ["--inverse", "C", "--data", "D", "--out", "O"],
                "reconstruct": ["--inverse", "C", "--images", "I", "--out", "O.png"],
                "eval-task": ["--data", "D", "--out", "O"], "analyze": ["--inverse", "C", "--data", "D", "--out", "O"]}
    argv = [*command, "--model", "M", *required[command[0]]]
    assert parser.parse_args(argv).amp == "off"
    assert parser.parse_args([*argv, "--amp", "bf16"]).amp == "bf16"
