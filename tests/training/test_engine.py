"""The training engine's own rules: the time budget, Ctrl-C, and configs that cannot run.

MobileNet-V2 (random weights) at 32×32 with ``arch="auto"`` components: a whole chain of ~0.1 M
parameters, so checkpoints and best/ cost milliseconds; the rules are the engine's, the same for
every objective.
"""

from __future__ import annotations

import json

import pytest

import modinv
from modinv.cli import main
from modinv.data import open_source
from modinv.errors import ModinvError
from modinv.training import checkpoint as ckpt
from modinv.training.modular import ModularTrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = (32, 32)
STEPS = 1000


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _trainer(model, out, **settings) -> ModularTrainer:
    data = open_source("samples", size=SIZE)
    chain = modinv.InverseChain.build(model, arch="auto", seed=0)
    config = TrainConfig(**(dict(steps=STEPS, batch_size=2, val_every=STEPS, checkpoint_every=STEPS, amp="off")
                            | settings))
    return ModularTrainer(model, chain, data, data, out, config)


def test_time_budget_stops_validates_and_keeps_the_best(mobilenet, tmp_path):
    trainer = _trainer(mobilenet, tmp_path, max_seconds=1e-3)
    best = trainer.fit(progress=False)
    assert trainer.stop_reason == "time budget"
    assert 1 <= trainer.step < STEPS  # one step already spends a millisecond
    assert trainer.seconds >= 1e-3
    records = _records(tmp_path)
    assert records[-1] == {"step": trainer.step, "event": "stopped", "reason": "time budget",
                           "time": pytest.approx(trainer.seconds)}
    validations = [r for r in records if r.get("event") == "validation"]
    assert [r["step"] for r in validations] == [trainer.step]  # validated where it stopped, not at STEPS
    assert set(best) == set(mobilenet.stages) and all(b["step"] == trainer.step for b in best.values())
    manifest = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert manifest["metrics"] == json.loads(json.dumps(best))
    modinv.InverseChain.load(tmp_path / "best", mobilenet)
    # a checkpoint of the step it stopped at: --resume continues from there
    assert ckpt.latest(tmp_path / "checkpoints").name == f"ckpt-{trainer.step:08d}"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["max_seconds"] == 1e-3


def test_a_budget_alone_ends_the_run(mobilenet, tmp_path):
    """Neither steps nor epochs: only the budget ends the run."""
    trainer = _trainer(mobilenet, tmp_path, steps=None, max_seconds=1e-3)
    assert trainer.total_steps is None
    trainer.fit(progress=False)
    assert trainer.stop_reason == "time budget" and trainer.step >= 1


def test_resume_after_the_budget_continues_to_the_step_limit(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path, max_seconds=1e-3).fit(progress=False)
    stopped_at = ckpt.load_state(ckpt.latest(tmp_path / "checkpoints"))["step"]
    resumed = _trainer(mobilenet, tmp_path, steps=stopped_at + 2)
    resumed.fit(resume=True, progress=False)
    assert (resumed.step, resumed.stop_reason) == (stopped_at + 2, "step limit")
    assert {"step": stopped_at, "event": "resumed", "from": f"ckpt-{stopped_at:08d}"} in _records(tmp_path)


def test_ctrl_c_ends_training_only_when_asked(mobilenet, tmp_path):
    def interrupting(trainer):
        step = trainer.train_step

        def train_step(batch):
            if trainer.step == 2:
                raise KeyboardInterrupt
            return step(batch)

        trainer.train_step = train_step
        return trainer

    with pytest.raises(KeyboardInterrupt):
        interrupting(_trainer(mobilenet, tmp_path / "raise")).fit(progress=False)
    trainer = interrupting(_trainer(mobilenet, tmp_path / "stop", stop_on_interrupt=True))
    trainer.fit(progress=False)
    assert (trainer.stop_reason, trainer.step) == ("interrupt", 2)
    assert _records(tmp_path / "stop")[-1]["reason"] == "interrupt"
    modinv.InverseChain.load(tmp_path / "stop" / "best", mobilenet)
    assert ckpt.latest(tmp_path / "stop" / "checkpoints") is None  # a half-applied step is never checkpointed


def test_cli_max_minutes_is_the_time_budget(tmp_path, capsys):
    assert main(["train", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
                 "--arch", "auto", "--data", "samples", "--out", str(tmp_path), "--steps", str(STEPS), "--batch", "2",
                 "--max-minutes", "1e-5", "--no-progress", "--amp", "off"]) == 0
    assert "stopped by the time budget" in capsys.readouterr().out
    records = _records(tmp_path)
    assert records[-1]["reason"] == "time budget" and records[-1]["step"] < STEPS
    assert json.loads((tmp_path / "config.json").read_text())["train"]["max_seconds"] == pytest.approx(6e-4)
    assert (tmp_path / "best" / "manifest.json").is_file()


@pytest.mark.parametrize("settings,message", [
    ({"steps": 2, "epochs": 1}, "exactly one of steps or epochs"),
    ({"steps": None}, "exactly one of steps or epochs"),
    ({"max_seconds": 0.0}, "time budget must be a positive number"),
    ({"max_seconds": float("nan")}, "time budget must be a positive number"),
])
def test_configs_that_cannot_run_are_one_sentence(mobilenet, tmp_path, settings, message):
    with pytest.raises(ModinvError, match=message):
        _trainer(mobilenet, tmp_path, **settings)
