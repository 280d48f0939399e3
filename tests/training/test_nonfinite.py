"""Non-finite losses/gradients: the update of that component is skipped (warned and logged), the
others train on, the checkpoints stay finite; too many in a row stop the run with a ModinvError.

ModularTrainer on ViT-B/16 (random weights) at 32×32 with ``arch="auto"`` components (small and
fast on a CPU; the skipping logic is the trainer's, the same for every architecture). NaN is
injected by wrapping a component's ``forward`` for chosen training calls (one call per step).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import modinv
from modinv.errors import ModinvError
from modinv.training import checkpoint as ckpt
from modinv.training.modular import ModularTrainer, TrainConfig

NAN = float("nan")


def _inject(component: torch.nn.Module, calls: set[int] | None, where: str = "output") -> None:
    """Make ``component`` produce NaN on the chosen (0-based) calls, all calls when ``calls`` is None:
    ``where="output"`` poisons its output, ``"input"`` its input (so NaN runs through its layers)."""
    original, counter = component.forward, itertools.count()

    def forward(x, context=None):
        hit = calls is None or next(counter) in calls
        if hit and where == "input":
            return original(x + NAN, context)
        out = original(x, context)
        return out + NAN if hit else out

    component.forward = forward


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    names = [n for n, _ in module.named_parameters()]
    return all(torch.equal(a[n], b[n]) for n in names)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_floating_point(t))


def _train(model, data, out, nan_stage, calls, where="output", **config):
    chain = modinv.InverseChain.build(model, arch="auto", seed=0)
    _inject(chain.components[nan_stage], calls, where)
    settings = dict(steps=5, batch_size=2, val_every=100, checkpoint_every=100, amp="off") | config
    trainer = ModularTrainer(model, chain, data, None, out, TrainConfig(**settings))
    history = []  # per step: (step, weights before, weights after) of every component
    train_step = trainer.train_step

    def recorded(images):
        before = {s: _snapshot(chain.components[s]) for s in trainer.stages}
        losses = train_step(images)
        history.append((trainer.step, before, {s: _snapshot(chain.components[s]) for s in trainer.stages}))
        return losses

    trainer.train_step = recorded
    return trainer, chain, history


def _check_checkpoint(out, model) -> None:
    """The checkpoint written at the end loads, and every weight, buffer and optimiser state in it is finite."""
    folder = ckpt.latest(out / "checkpoints")
    chain = modinv.InverseChain.load(folder / "chain", model)
    assert _all_finite(chain.state_dict().values())
    state = ckpt.load_state(folder)
    for stage, optimizer in state["optimizers"].items():
        assert _all_finite(t for s in optimizer["state"].values() for t in s.values()), stage
    best = modinv.InverseChain.load(out / "best", model)
    assert _all_finite(best.state_dict().values())


def test_nan_steps_of_one_component_are_skipped(vit_small, samples_small, tmp_path):
    model, data = vit_small, samples_small
    nan_steps = {1, 2}
    trainer, chain, history = _train(model, data, tmp_path, "enc", nan_steps, steps=4)
    with pytest.warns(RuntimeWarning, match="non-finite loss/gradient for enc⁻¹.*update skipped") as caught:
        trainer.fit(progress=False)
    assert sum("non-finite" in str(w.message) for w in caught) == len(nan_steps)
    nonfinite = [r for r in _records(tmp_path) if r.get("event") == "nonfinite"]
    assert [(r["step"], r["stage"]) for r in nonfinite] == [(s, "enc") for s in sorted(nan_steps)]
    assert all(r["loss"] is None for r in nonfinite)  # NaN is written as JSON null
    assert len(history) == 4
    for step, before, after in history:
        enc_same = _params_equal(before["enc"], after["enc"], chain.components["enc"])
        assert enc_same == (step in nan_steps), step  # frozen exactly on the NaN steps, trained on the others
        assert not _params_equal(before["bb"], after["bb"], chain.components["bb"]), step  # bb⁻¹ always trains
    assert trainer.nonfinite == {"bb": 0, "enc": 0}  # a finite step resets the count
    _check_checkpoint(tmp_path, model)


def test_nan_input_does_not_poison_batchnorm_statistics(vit_small, samples_small, tmp_path):
    """NaN *entering* a component with BatchNorm (bb⁻¹) updates its running mean/var with NaN during
    the forward pass, before the update is skipped: the saved component would then give NaN in eval mode."""
    model, data = vit_small, samples_small
    trainer, chain, history = _train(model, data, tmp_path, "bb", {1}, where="input", steps=3)
    with pytest.warns(RuntimeWarning, match="non-finite loss/gradient for bb⁻¹"):
        trainer.fit(progress=False)
    step, before, after = history[1]
    changed = [k for k in before["bb"] if not torch.equal(before["bb"][k], after["bb"][k])]
    assert not changed, f"the skipped step changed {changed}"  # today: the BatchNorm running stats (NaN)
    _check_checkpoint(tmp_path, model)


def test_nan_on_every_step_stops_after_max_nonfinite(vit_small, samples_small, tmp_path):
    model, data = vit_small, samples_small
    trainer, chain, history = _train(model, data, tmp_path, "enc", None, steps=20, max_nonfinite=3)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        with pytest.raises(ModinvError, match=r"enc⁻¹ produced non-finite losses or gradients 3 steps in a row") as err:
            trainer.fit(progress=False)
    assert "\n" not in str(err.value) and "--lr" in str(err.value)
    nonfinite = [r for r in _records(tmp_path) if r.get("event") == "nonfinite"]
    assert [r["step"] for r in nonfinite] == [0, 1, 2]
    assert len(history) == 2  # the third step raised inside train_step
    for _, before, after in history:
        assert _params_equal(before["enc"], after["enc"], chain.components["enc"])
