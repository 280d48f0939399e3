"""``modinv.training.train``: the one entry point that assembles a run (chain, data, config,
trainer), and the proof that ``modinv train``, ``modinv finetune`` and the demo go through it."""

from __future__ import annotations

import json

import pytest

import modinv
import modinv.training
from modinv.cli import main
from modinv.demo.run import run_demo
from modinv.errors import ModinvError
from modinv.training import entry

SETTINGS = {"steps": 2, "batch_size": 2, "val_every": 2, "val_batches": 1, "checkpoint_every": 2, "seed": 3}


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def test_train_a_modular_run_and_a_classic_one(mobilenet, tmp_path):
    result = modinv.training.train(mobilenet, "samples", tmp_path / "run", settings=SETTINGS, arch="auto",
                                   progress=False)
    assert isinstance(result, modinv.training.TrainResult) and result.steps == 2
    assert result.stop_reason == "step limit" and set(result.best) == set(mobilenet.stages)
    assert result.chain.stages == mobilenet.stages and result.trainer.config.seed == 3
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == "samples" and config["val_fraction"] == 0.1 and config["arch"] == "auto"
    assert modinv.InverseChain.load(tmp_path / "run" / "best", mobilenet).stages == mobilenet.stages

    classic = modinv.training.train(mobilenet, "samples", tmp_path / "classic", method="classic", stage="s8",
                                    settings=SETTINGS, arch="auto", progress=False)
    assert classic.chain.stages == ("s4", "s8") and "s8" in classic.best
    assert classic.chain.layout["training"] == "classic"


def test_bad_requests_are_one_sentence(mobilenet, tmp_path):
    cases = [({"method": "magic"}, "unknown training method 'magic'; valid: modular, classic, finetune"),
             ({"method": "classic"}, "a classic run needs the stage"),
             ({"method": "classic", "stage": "s99"}, "unknown stage 's99'"),
             ({"stage": "s8"}, "a modular run trains one component per stage"),
             ({"val_data": "samples", "data": []}, "pass val_data as a data set")]
    for options, message in cases:
        options = {"data": "samples", **options}
        with pytest.raises(ModinvError, match=message):
            modinv.training.train(mobilenet, out=tmp_path / "bad", settings=SETTINGS, **options)


class Reached(Exception):
    """Raised by the stand-in entry point: the caller got there."""


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every call of ``modinv.training.train`` (which then stops the caller)."""
    seen: list[dict] = []

    def fake(model, data, out, **options):
        seen.append({"model": model.name, "data": data, "out": out, **options})
        raise Reached

    monkeypatch.setattr(entry, "train", fake)
    return seen


SMALL_MOBILENET = ["--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32"]


def test_the_commands_and_the_demo_train_through_it(calls, tmp_path):
    with pytest.raises(Reached):
        main(["train", *SMALL_MOBILENET, "--data", "samples", "--steps", "1", "--out", str(tmp_path / "a")])
    with pytest.raises(Reached):
        main(["train", *SMALL_MOBILENET, "--classic", "s8", "--data", "samples", "--steps", "1",
              "--out", str(tmp_path / "b")])
    with pytest.raises(Reached):
        main(["finetune", *SMALL_MOBILENET, "--lam", "1", "--stage", "s8", "--data", "samples", "--steps", "1",
              "--out", str(tmp_path / "c")])
    with pytest.raises(Reached):
        run_demo(tmp_path / "d", weights="random", input_size=(32, 32), steps=1, device="cpu", log=None)
    assert [(c["method"] if "method" in c else "modular", c.get("stage")) for c in calls] == [
        ("modular", None), ("classic", "s8"), ("finetune", "s8"), ("modular", None)]
    assert [c["run_info"]["command"] for c in calls[:3]] == ["train", "train", "finetune"]
    assert calls[3]["chain"] is not None and calls[3]["settings"]["stop_on_interrupt"] is True
