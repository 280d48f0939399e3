"""What a chain or a run already knows is not asked again: ``--inverse`` names the model (its
manifest gives model, weights, seed and input size; options given must agree with it), a run
folder given as a chain means its ``best/``, and ``train --resume`` needs only ``--out``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from modinv.cli import main

MOBILENET = ["--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32"]


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread, model_cache):
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-step training run of a random MobileNet-V2 (seed 3) at 32×32 on the sample photos."""
    out = tmp_path_factory.mktemp("runs") / "mnet"
    assert main(["train", *MOBILENET, "--seed", "3", "--data", "samples", "--out", str(out), "--steps", "2",
                 "--batch", "2", "--val-every", "1", "--val-batches", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.jpg"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(path)
    return path


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"modinv {argv[0]}: error: ")
    return lines[-1].split("error: ", 1)[1]


def test_reconstruct_needs_only_the_run_folder(run, photo, tmp_path, capsys):
    capsys.readouterr()
    assert main(["reconstruct", "--inverse", str(run), "--images", str(photo), "--out", str(tmp_path / "g.png")]) == 0
    err = capsys.readouterr().err
    assert f"using its best chain {str(run / 'best')!r}" in err
    assert (tmp_path / "g.png").stat().st_size > 0


def test_evaluate_takes_model_weights_seed_and_size_from_the_chain(run, tmp_path, model_cache):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--inverse", str(run / "best"), "--data", "samples", "--limit", "2",
                 "--metrics", "mse", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n_images"] == 2


@pytest.mark.parametrize("option, expected", [
    (["--seed", "7"], "--seed 7 does not match the chain in {where}, which was made for --seed 3"),
    (["--weights", "pretrained"], "--weights pretrained does not match the chain in {where}, which was made for "
                                  "--weights random"),
    (["--model", "vit-b16"], "--model vit-b16 does not match the chain in {where}, which was made for --model "
                             "mobilenet-v2"),
    (["--input-size", "64", "64"], "--input-size 64 64 does not match the chain in {where}, which was made for "
                                   "--input-size 32 32"),
])
def test_options_that_contradict_the_chain_are_refused(option, expected, run, photo, tmp_path, capsys):
    where = repr(str(run / "best"))
    message = _error(["reconstruct", "--inverse", str(run / "best"), "--images", str(photo), *option,
                      "--out", str(tmp_path / "g.png")], capsys)
    assert message.startswith(expected.format(where=where)) and message.endswith("leave it out to use the chain's")
    assert not (tmp_path / "g.png").exists()


def test_options_that_agree_with_the_chain_are_accepted(run, photo, tmp_path):
    assert main(["reconstruct", "--inverse", str(run), "--images", str(photo), *MOBILENET, "--seed", "3",
                 "--out", str(tmp_path / "g.png")]) == 0


def test_analyses_take_the_model_from_the_chain(run, tmp_path):
    out = tmp_path / "stages"
    assert main(["analyze", "stages", "--inverse", str(run), "--data", "samples", "--limit", "2",
                 "--metrics", "mse", "--out", str(out)]) == 0
    assert json.loads((out / "stages.json").read_text())["results"]


def test_resume_needs_only_out_and_the_new_length(run, capsys):
    capsys.readouterr()
    with pytest.warns(UserWarning, match="steps 2 -> 3"):
        assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "mobilenet-v2" and config["weights"] == "random" and config["data"] == "samples"
    assert config["train"]["seed"] == 3 and config["train"]["batch_size"] == 2 and config["train"]["steps"] == 3
    assert json.loads((run / "best" / "manifest.json").read_text())["input_size"] == [32, 32]
    assert "inverse chain written to" in capsys.readouterr().out


def test_resume_of_nothing_asks_for_the_settings(tmp_path, capsys):
    message = _error(["train", "--out", str(tmp_path / "none"), "--resume", "--steps", "3"], capsys)
    assert message == (f"--resume: {str(tmp_path / 'none')!r} holds no config.json to take the run's settings from; "
                       "give --model, --data")
    assert not (tmp_path / "none").exists()


def test_a_new_run_still_needs_model_data_and_length(tmp_path, capsys):
    assert _error(["train", "--out", str(tmp_path / "r"), "--steps", "2"], capsys) == (
        "the following arguments are required: --model, --data")
    assert _error(["train", *MOBILENET, "--data", "samples", "--out", str(tmp_path / "r")], capsys) == (
        "give --steps or --epochs (how long to train), or --max-minutes")
    assert not (tmp_path / "r").exists()


# -- nothing half-made ------------------------------------------------------------------------------------

def test_a_command_that_fails_before_writing_leaves_no_new_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    message = _error(["train", *MOBILENET, "--data", "samples", "--out", str(out), "--steps", "1",
                      "--stages", "nosuch"], capsys)
    assert "nosuch" in message and not (tmp_path / "new").exists()
    assert _error(["evaluate", "--inverse", str(tmp_path / "nochain"), "--data", "samples",
                   "--out", str(tmp_path / "e" / "e.json")], capsys)
    assert not (tmp_path / "e").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    assert _error(["train", *MOBILENET, "--data", "samples", "--out", str(tmp_path / "kept"), "--steps", "1",
                   "--stages", "nosuch"], capsys)
    assert (tmp_path / "kept").is_dir()


def test_lpips_asked_for_by_name_without_its_weights_is_an_error(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    out = tmp_path / "out" / "e.json"
    message = _error(["evaluate", "--inverse", str(run), "--data", "samples", "--limit", "2", "--metrics", "mse,lpips",
                      "--out", str(out)], capsys)
    assert message.startswith("--metrics asks for LPIPS, which cannot be computed here: ")
    assert "--lpips-weights" in message and not (tmp_path / "out").exists()
    # without --metrics: every metric that can be computed, saying which was left out and why
    assert main(["evaluate", "--inverse", str(run), "--data", "samples", "--limit", "2", "--out", str(out)]) == 0
    assert "LPIPS not computed: " in capsys.readouterr().out
    assert list(json.loads(out.read_text())["metrics"]) == ["mse", "psnr", "ssim"]


def test_finetune_resumes_with_only_out_and_its_chain_names_the_finetuned_weights(tmp_path, photo, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", *MOBILENET, "--lam", "1", "--stage", "s8", "--data", "samples", "--out", str(out),
                 "--steps", "1", "--batch", "2", "--val-batches", "1", "--no-progress"]) == 0
    with pytest.warns(UserWarning, match="steps 1 -> 2"):
        assert main(["finetune", "--out", str(out), "--resume", "--steps", "2", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lam"] == 1 and config["train"]["stage"] == "s8" and config["train"]["steps"] == 2
    # the chain was made for the fine-tuned weights written beside it: reconstruct finds them alone
    assert main(["reconstruct", "--inverse", str(out), "--images", str(photo), "--out", str(tmp_path / "g.png")]) == 0


def test_no_reuse_memory_is_recorded_and_may_change_on_resume(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *MOBILENET, "--data", "samples", "--out", str(out), "--steps", "1", "--batch", "2",
                 "--stages", "s8", "--val-every", "1", "--val-batches", "1", "--no-reuse-memory", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["reuse_memory"] is False
    with pytest.warns(UserWarning, match="reuse_memory"):  # a speed setting: changeable, and the change is logged
        assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["reuse_memory"] is True
