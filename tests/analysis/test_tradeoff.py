"""``modinv analyze tradeoff`` (Fig. 4 centre/right) from tiny runs: λ 0, 0.5, 1, modular, classic."""

from __future__ import annotations

import json

import pytest

from modinv.cli import main
from modinv.data.synthetic import make_image_folder

SIZE = ["--input-size", "32", "32"]
MODEL = ["--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", *SIZE, "--arch", "auto"]
RUN = ["--steps", "1", "--batch", "2", "--no-progress", "--amp", "off"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five one-step runs of MobileNet-V2 inverting from s8, on a four-class image folder."""
    root = tmp_path_factory.mktemp("tradeoff")
    data = f"imagenet:{make_image_folder(root / 'inet', per_class=2, size=(32, 32))}"
    out = {}
    for lam in ("0", "0.5", "1"):
        out[lam] = root / f"lam{lam}"
        assert main(["finetune", *MODEL, "--lam", lam, "--stage", "s8", "--data", data, *RUN, "--out",
                     str(out[lam])]) == 0
    out["modular"] = root / "modular"
    assert main(["train", *MODEL, "--data", data, *RUN, "--out", str(out["modular"])]) == 0
    out["classic"] = root / "classic"
    assert main(["train", *MODEL, "--classic", "s8", "--data", data, *RUN, "--out", str(out["classic"])]) == 0
    out["data"] = data
    return out


def test_tradeoff_writes_a_figure_and_the_numbers_of_every_run(runs, tmp_path, capsys):
    names = ("0", "0.5", "1", "modular", "classic")
    assert main(["analyze", "tradeoff", "--runs", *[str(runs[n]) for n in names], "--data", runs["data"],
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "tradeoff.json").read_text())
    assert (tmp_path / "tradeoff.png").stat().st_size > 0 and result["figure"] == "tradeoff.png"
    assert result["model"] == "mobilenet-v2" and result["stage"] == "s8" and result["task_metric"] == "top1"
    points = result["points"]
    assert [p["label"] for p in points] == ["λ = 0", "λ = 0.5", "λ = 1", "modular", "classic"]
    assert [p["lam"] for p in points] == [0.0, 0.5, 1.0, None, None]
    for p in points:
        assert p["mse_ci95"][0] <= p["mse"] <= p["mse_ci95"][1] and 0 <= p["task"] <= 1 and p["n_images"] == points[0]["n_images"] > 0
    # modular and classic score the same (unchanged) weights; the fine-tuned runs their own
    assert points[3]["task"] == points[4]["task"]
    assert "wrote" in capsys.readouterr().out


def test_runs_of_different_stages_or_models_are_one_sentence_and_nothing_written(runs, tmp_path, capsys):
    other = tmp_path / "other_stage"
    assert main(["train", *MODEL, "--classic", "s4", "--data", runs["data"], *RUN, "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["analyze", "tradeoff", "--runs", str(runs["0.5"]), str(other), "--data", runs["data"],
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("modinv analyze: error: the fine-tuning and classic runs invert from different stages (s4, s8); "
                   "give runs of one stage j")
    assert not (tmp_path / "a").exists()
    config = json.loads((other / "config.json").read_text())
    config["model"] = "vit-b16"
    (other / "config.json").write_text(json.dumps(config))
    assert main(["analyze", "tradeoff", "--runs", str(runs["0.5"]), str(other), "--data", runs["data"],
                 "--out", str(tmp_path / "b")]) == 2
    assert "different models (mobilenet-v2, vit-b16)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
