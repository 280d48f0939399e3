"""Recipes as data (modinv.models.recipes) applied in training: ``--recipe paper`` records every
field, trains in float32, keeps BatchNorm statistics and computes bb⁻¹'s loss on normalised images."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import modinv
import modinv.runtime
from modinv.cli import main
from modinv.data import open_source
from modinv.inverse.chain import InverseChain
from modinv.models.base import IMAGE
from modinv.models.recipes import DETR_PAPER, MODINV, SWIN_PAPER, VIT_PAPER, Recipe, get_recipe, train_settings
from modinv.training.modular import ModularTrainer, TrainConfig

SWIN_SMALL = (64, 64)
TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}


@pytest.fixture(scope="module")
def swin_tiny():
    return modinv.load_model("swin-b", weights="random", seed=0, input_size=SWIN_SMALL, **TINY_SWIN)


def _train_bb(model, recipe: Recipe, out):
    """One step of bb⁻¹ under ``recipe`` on the sample photos (one batch); returns (trainer, chain before)."""
    chain = InverseChain.build(model, stages=["bb"], seed=0)
    before = InverseChain.build(model, stages=["bb"], seed=0)
    config = TrainConfig(steps=1, log_every=1, val_every=100, checkpoint_every=100,
                         **train_settings(recipe, ["bb"]))
    trainer = ModularTrainer(model, chain, open_source("samples", size=SWIN_SMALL), None, out, config)
    trainer.fit(progress=False)
    return trainer, before


def _bn_stats(component):
    return {k: v.clone() for k, v in component.state_dict().items() if "running" in k or "num_batches" in k}


def test_a_paper_step_keeps_batchnorm_statistics_and_a_modinv_step_updates_them(swin_tiny, tmp_path):
    trainer, before = _train_bb(swin_tiny, SWIN_PAPER, tmp_path / "paper")
    stats = _bn_stats(trainer.chain.components["bb"])
    assert stats and all(torch.equal(v, _bn_stats(before.components["bb"])[k]) for k, v in stats.items())
    assert not torch.equal(trainer.chain.components["bb"].decoder[0].weight, before.components["bb"].decoder[0].weight)
    trainer, before = _train_bb(swin_tiny, MODINV, tmp_path / "modinv")
    changed = _bn_stats(trainer.chain.components["bb"])
    assert any(not torch.equal(v, _bn_stats(before.components["bb"])[k]) for k, v in changed.items())


def test_paper_bb_loss_is_computed_on_normalised_images(swin_tiny, tmp_path):
    trainer, before = _train_bb(swin_tiny, SWIN_PAPER, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    record = next(r for r in logged if "loss" in r)
    assert record["loss_space"] == "normalized"
    photos = open_source("samples", size=SWIN_SMALL)  # all of them fit in the recipe's batch of 128
    images = torch.stack([photos[i]["image"] for i in range(len(photos))])
    with torch.no_grad():
        trace = swin_tiny.trace(images)
        prediction = before.components["bb"].eval()(trace["bb"], trace.context)
    normalised = F.mse_loss(swin_tiny.normalize(prediction), swin_tiny.normalize(trace[IMAGE])).item()
    pixels = F.mse_loss(prediction, trace[IMAGE]).item()
    assert record["loss"]["bb"] == pytest.approx(normalised, rel=1e-4)
    assert abs(normalised / pixels - 1) > 0.5  # the two spaces differ by far more than the tolerance


def test_recipe_settings_classic_and_finetune():
    settings = train_settings(SWIN_PAPER, ["s3", "s2", "s1", "bb"], classic_stage="s3")
    assert settings["lr"] == {s: 1e-4 for s in ("s3", "s2", "s1", "bb")} and settings["joint_clip"] is True
    assert train_settings(SWIN_PAPER, ["bb"])["lr"] == {"bb": 1e-4}
    assert train_settings(DETR_PAPER, ["bb"], variants={"bb": "local"})["lr"] == {"bb": 3e-3}
    assert train_settings(DETR_PAPER, ["bb"], variants={"bb": "standard"})["lr"] == {"bb": 1e-3}
    tuned = train_settings(VIT_PAPER, ["enc", "bb"], finetune=True)
    assert tuned["batch_size"] == 32 and tuned["lr"] == {"enc": 1e-5, "bb": 1e-5} and tuned["component_mode"] == "train"
    assert train_settings(MODINV, ["bb"]) == {"recipe": "modinv", "grad_clip": 1.0, "component_mode": "train",
                                             "image_loss_space": "pixels", "joint_clip": False, "lr": {}}
    with pytest.raises(modinv.ModinvError, match="precision must be one of"):
        Recipe(name="x", precision="fp8")


VIT_ARGS = ["train", "--model", "vit-b16", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
            "--data", "samples", "--steps", "1", "--batch", "2", "--stages", "bb", "--no-progress"]


@pytest.mark.parametrize("recipe,amp", [("paper", "off"), ("modinv", "torch.bfloat16")])
def test_cli_records_the_recipe_and_paper_trains_float32_where_bf16_is_native(recipe, amp, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(modinv.runtime, "cpu_supports_bf16", lambda: True)
    assert main([*VIT_ARGS, "--recipe", recipe, "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["amp"] == amp
    expected = get_recipe(modinv.load_model("vit-b16", weights="random", input_size=(32, 32)), recipe).to_dict()
    assert config["recipe"] == expected
    assert set(config["recipe"]) == {f.name for f in dataclasses.fields(Recipe)}
    assert config["train"]["recipe"] == recipe
    manifest = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == recipe
    if recipe == "paper":
        assert config["train"]["component_mode"] == "eval" and config["train"]["image_loss_space"] == "normalized"
        assert config["learning_rates"] == {"bb": 1e-3} and config["train"]["batch_size"] == 2  # --batch wins


def test_unknown_or_undeclared_recipes_are_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*VIT_ARGS, "--recipe", "nope", "--out", str(tmp_path / "a")])
    assert exit_.value.code == 2 and "unknown recipe 'nope'; valid: modinv, paper" in capsys.readouterr().err
    assert main(["train", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32",
                 "32", "--data", "samples", "--steps", "1", "--recipe", "paper", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "modinv train: error: model 'mobilenet-v2' has no recipe 'paper'; its recipes: modinv"


def test_cli_classic_paper_recipe_uses_the_paths_one_rate_and_one_clip(tmp_path):
    args = [a for a in VIT_ARGS if a not in ("--stages",)]
    args.remove("bb")
    assert main([*args, "--classic", "bb", "--recipe", "paper", "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["learning_rates"] == {"bb": 1e-3} and config["train"]["joint_clip"] is True
    assert config["amp"] == "off" and config["training"] == "classic"


def test_cli_finetune_paper_recipe_takes_the_fine_tuning_scripts_settings(tmp_path):
    args = [a for a in VIT_ARGS if a not in ("--stages", "bb")]
    args[0] = "finetune"
    assert main([*args, "--lam", "1", "--recipe", "paper", "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["learning_rates"] == {"enc": 1e-5, "bb": 1e-5} and config["train"]["component_mode"] == "train"
    assert config["amp"] == "off" and config["recipe"]["finetune_batch_size"] == 32
    assert config["train"]["image_loss_space"] == "normalized"
