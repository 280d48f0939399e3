"""The small commands end to end: ``info``, ``params`` and ``eval-task``, through ``modinv.cli.main``.

Models come from the root conftest's ``model_cache``; ``eval-task`` picks its metric from the
model's declared task (``model.meta.task``), which a module staged with ``from_module`` declares
as well as a registered model.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modinv.cli import main
from modinv.data.synthetic import make_image_folder
from modinv.inverse.chain import InverseChain
from modinv.inverse.summary import describe
from modinv.models import from_module

MOBILENET = ["--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32"]
TINY_SIZE = (16, 16)


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _tiny_net(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


def _tiny(name: str, **declared) -> nn.Module:
    """A two-stage module model, named ``name`` for the CLI's --model."""
    return from_module(_tiny_net(), {"conv": "0", "pool": "2"}, input_size=TINY_SIZE, name=name, **declared)


def _tiny_args(name: str) -> list[str]:
    return ["--model", name, "--weights", "random", "--device", "cpu", "--input-size", *map(str, TINY_SIZE)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three ImageNet-1k synset folders, one image each."""
    return make_image_folder(tmp_path_factory.mktemp("inet"), per_class=1, size=TINY_SIZE)


def test_info_json_is_the_library_description(model_cache, capsys):
    capsys.readouterr()
    assert main(["info", *MOBILENET, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model = model_cache("mobilenet-v2", weights="random", seed=0, device="cpu", input_size=(32, 32))
    chain = InverseChain.build(model, arch="default", seed=0)
    assert printed == json.loads(json.dumps(describe(model, chain)))
    assert [row["stage"] for row in printed["stages"]] == ["s4", "s8", "s16", "s32"]
    assert printed["stages"][0]["shape"] == [24, 8, 8]
    assert printed["modular_trainable_parameters"] == chain.trainable_parameters()["total"]
    assert printed["full_path_trainable_parameters"] == chain.full_path_parameters()["total"]
    assert printed["modular_trainable_parameters"] < printed["full_path_trainable_parameters"]


def test_info_table(model_cache, capsys):
    capsys.readouterr()
    assert main(["info", *MOBILENET]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model mobilenet-v2  weights random  input 32×32"
    assert lines[2].startswith("s4      24×8×8") and len(lines) == 9
    assert lines[-1].startswith("trainable parameters, per-stage full-path (classic): ")


def test_params_builds_every_classic_chain(model_cache, tmp_path, capsys):
    out = tmp_path / "params.json"
    assert main(["params", *MOBILENET, "--arch", "auto", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mobilenet-v2 (auto inverse components), trainable parameters")
    assert f"written to {out}" in printed
    result = json.loads(out.read_text())
    assert result["classic_paths"] == {"s4": ["s4"], "s8": ["s8", "s4"], "s16": ["s16", "s8", "s4"],
                                       "s32": ["s32", "s16", "s8", "s4"]}
    assert result["weights"] == "random" and result["arch"] == "auto"
    assert result["classic_measured"] == result["full_path_sum"]


def test_eval_task_top1_of_a_declared_classifier(model_cache, folder, tmp_path, capsys):
    model_cache.add(_tiny("tiny-classifier", task="classification", class_names=list("abcde")))
    out = tmp_path / "top1.json"
    argv = ["eval-task", *_tiny_args("tiny-classifier"), "--data", f"imagenet:{folder}", "--label-map", "sorted",
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["metric"] == "top1" and result["n"] == 3 and result["label_map"] == "sorted"
    assert result["precision"] == "float32"  # unless --amp asks otherwise
    assert result["model"] == "tiny-classifier" and 0 <= result["top1"] <= 1
    assert f"({result['correct']}/3 images)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "declared,data,expected",
    [
        ({"task": "detection"}, "imagenet:{folder}",
         "tiny is evaluated by COCO box AP: pass --data coco:ROOT[:split], not 'imagenet:{folder}'"),
        ({"task": "classification"}, "samples",
         "tiny is evaluated by top-1 accuracy (COCO box AP is for detectors): pass --data imagenet:ROOT[:split] "
         "(one folder per class), not 'samples'"),
        ({}, "imagenet:{folder}", "tiny declares no task (no classifier or detector head), so it has no task metric"),
    ],
)
def test_eval_task_follows_the_declared_task(declared, data, expected, model_cache, folder, tmp_path, capsys):
    model_cache.add(_tiny("tiny", **declared))
    data = data.format(folder=folder)
    capsys.readouterr()
    assert main(["eval-task", *_tiny_args("tiny"), "--data", data, "--out", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.strip() == f"modinv eval-task: error: {expected.format(folder=folder)}"
    assert not (tmp_path / "r.json").exists()


def test_eval_task_knows_detr_is_a_detector(model_cache, detr, folder, tmp_path, capsys):
    model_cache.add(detr)
    argv = ["eval-task", "--model", "detr-r50", "--weights", "random", "--device", "cpu", "--input-size", "480", "640",
            "--data", f"imagenet:{folder}", "--out", str(tmp_path / "ap.json")]
    capsys.readouterr()
    assert main(argv) == 2
    assert "detr-r50 is evaluated by COCO box AP" in capsys.readouterr().err


def _evaluate_args(name: str, chain, out) -> list[str]:
    return ["evaluate", *_tiny_args(name), "--inverse", str(chain), "--data", "samples", "--batch", "2", "--limit",
            "3", "--out", str(out)]


@pytest.fixture(scope="module")
def tiny_chain(model_cache, tmp_path_factory):
    """A fresh inverse chain (auto components) of a two-stage tiny model, saved; the model cached for the CLI."""
    model = model_cache.add(_tiny("tiny-eval"))
    return InverseChain.build(model, arch="auto", seed=0).eval().save(tmp_path_factory.mktemp("chain") / "c")


def test_evaluate_prints_and_writes_every_metric_per_stage(tiny_chain, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no LPIPS backbone weights here
    out = tmp_path / "e.json"
    capsys.readouterr()
    assert main(_evaluate_args("tiny-eval", tiny_chain, out)) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(out.read_text())
    stages = list(result["stages"])
    assert stages == ["conv", "pool"] and result["n_images"] == 3 and result["precision"] == "float32"
    assert list(result["metrics"]) == ["mse", "psnr", "ssim"]
    reason = result["not_computed"]["lpips"]
    assert reason.startswith("the alexnet backbone weights are not in the local torch cache")
    assert lines[0] == f"LPIPS not computed: {reason}" and sum("LPIPS" in line for line in lines) == 1
    assert len(lines) == 1 + 3 * (len(stages) + 1)  # one line per stage and metric, then the baseline per metric
    for stage in stages:
        for name in ("mse", "psnr", "ssim"):
            r = result["metrics"][name]["stages"][stage]
            assert any(line.startswith(f"{stage:<8} {name.upper():<5} ") and f"n={r['n']}" in line for line in lines)
    assert lines[-1].startswith("mean     SSIM  ") and lines[-1].endswith("(mean-image baseline)")
    # every interval inside its metric's range (PSNR: [0, inf), written as null)
    for name, per in result["metrics"].items():
        low, high = result["metric_info"][name]["low"], result["metric_info"][name]["high"]
        for r in [*per["stages"].values(), per["mean_image_baseline"]]:
            assert low <= r["ci95"][0] <= r["mean"] <= r["ci95"][1] and (high is None or r["ci95"][1] <= high)
            assert r["ci_method"] in result["ci"]["methods"]
    assert result["stages"]["conv"]["mse"] == result["metrics"]["mse"]["stages"]["conv"]["mean"]


def test_evaluate_metric_selection_and_lpips_weights(tiny_chain, tmp_path, capsys):
    out = tmp_path / "e.json"
    capsys.readouterr()
    missing = tmp_path / "alexnet.pth"
    assert main([*_evaluate_args("tiny-eval", tiny_chain, out), "--metrics", "ssim, lpips",
                 "--lpips-weights", str(missing)]) == 2  # asked for by name: an error, not a silent omission
    assert capsys.readouterr().err.strip().endswith(
        f"the LPIPS weights file {str(missing)!r} does not exist; give --lpips-weights FILE (torchvision's AlexNet "
        "weights) or leave lpips out of --metrics")
    assert not out.exists()
    assert main([*_evaluate_args("tiny-eval", tiny_chain, out), "--metrics", "ssim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["SSIM"] * 3
    result = json.loads(out.read_text())
    assert list(result["metrics"]) == ["ssim"] and set(result["stages"]) == {"conv", "pool"}  # "stages": the MSE


def test_evaluate_refuses_an_unknown_metric(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*_evaluate_args("tiny-eval", tmp_path / "chain", tmp_path / "e.json"), "--metrics", "mse,nosuch"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "modinv evaluate: error: argument --metrics: unknown metric(s) nosuch; choose from mse, psnr, ssim, lpips")
    assert not (tmp_path / "e.json").exists()


def test_evaluate_leaves_out_stages_whose_components_never_trained(model_cache, tmp_path, capsys):
    """Was: after `train --stages pool`, every stage was evaluated and reported as if trained."""
    model = model_cache.add(_tiny("tiny-eval"))
    chain = InverseChain.build(model, arch="auto", seed=0).eval()
    folder = chain.save(tmp_path / "chain", training={"pool": {"steps": 3}})
    out = tmp_path / "e.json"
    capsys.readouterr()
    assert main(_evaluate_args("tiny-eval", folder, out)) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["pool"] and result["untrained_stages"] == ["conv"]
    assert ("left out stage(s) conv, whose components were never trained (the chain's manifest says so); "
            "--untrained includes them") in printed
    assert main([*_evaluate_args("tiny-eval", folder, out), "--untrained"]) == 0
    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["conv", "pool"] and result["untrained_stages"] == ["conv"]
