"""λ fine-tuning (Eq. 3): gradient weighting, λ = 0 and λ = 1, exact resume, the command.

CPU-sized: MobileNet-V2 at 32×32 (a classifier whose classic inverse has ~0.1 M parameters) unless a
test is about a specific model.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

import modinv
from modinv.errors import ModinvError
from modinv.cli import main
from modinv.data import make_loader, open_source
from modinv.training import finetune as ft
from modinv.training.classic import build_classic_chain
from modinv.training.finetune import FinetuneConfig, FinetuneTrainer, scale_gradient

pytestmark = pytest.mark.usefixtures("one_thread")  # root conftest: one intra-op thread for these small passes
SMALL = (32, 32)


def _config(**kw):
    base = dict(steps=2, batch_size=6, val_every=1000, checkpoint_every=1000, amp="off")
    return FinetuneConfig(**(base | kw))


def test_scale_gradient_is_exact():
    x = torch.randn(5, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((5,), 0.25))


def test_lambda_zero_frozen_option_keeps_theta_bit_identical(tmp_path, image_folder):
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chain = build_classic_chain(model, "s8")
    phi_before = {k: v.clone() for k, v in chain.state_dict().items()}
    source = open_source(f"imagenet:{image_folder}", size=SMALL)
    config = _config(stage="s8", lam=0.0, val_every=2, zero_lambda="frozen")
    trainer = FinetuneTrainer(model, chain, source, source, tmp_path, config)
    trainer.fit(progress=False)
    assert not trainer.objective.theta_trains
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(phi_before[k], v) for k, v in chain.state_dict().items())  # φ trained
    reloaded = modinv.load_model("mobilenet-v2", weights=str(tmp_path / "best" / "forward.safetensors"),
                                 input_size=SMALL)
    assert all(torch.equal(before[k], v) for k, v in reloaded.state_dict().items())
    manifest = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert manifest["training"] == "finetune" and manifest["lambda"] == 0.0
    assert "classic_stage" not in manifest and manifest["finetune_stage"]  # a fine-tuned chain, not a classic one
    assert manifest["zero_lambda"] == "frozen"
    assert json.loads((tmp_path / "config.json").read_text())["zero_lambda"] == "frozen"
    # forward.safetensors carries a checksum in the manifest, required on load (issue 27)
    forward = tmp_path / "best" / "forward.safetensors"
    assert manifest["files"] == {"forward.safetensors": hashlib.sha256(forward.read_bytes()).hexdigest()}
    data = bytearray(forward.read_bytes())
    data[-1] ^= 1  # a flipped bit in a tensor: the file still reads, the numbers are wrong
    forward.write_bytes(bytes(data))
    with pytest.raises(ModinvError, match=f"weights file '{forward}' does not match the checksum in "):
        modinv.load_model("mobilenet-v2", weights=str(forward), input_size=SMALL)
    del manifest["files"]  # written by an older modinv: one warning
    (tmp_path / "best" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="has no checksum"):
        modinv.load_model("mobilenet-v2", weights=str(forward), input_size=SMALL)


def test_lambda_zero_trains_theta_on_the_task_loss_alone_by_default(tmp_path, image_folder):
    """The paper's λ = 0 (the default): θ is fine-tuned, and its gradient is the task loss's alone
    (the reconstruction gradient into θ is exactly zero) while φ learns the classic inversion."""
    source = open_source(f"imagenet:{image_folder}", size=SMALL)
    batch = next(iter(make_loader(source, batch_size=6)))
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    chain = build_classic_chain(model, "s8")
    trainer = FinetuneTrainer(model, chain, source, None, tmp_path / "grad",
                              _config(stage="s8", lam=0.0, forward_mode="eval"))
    assert trainer.objective.theta_trains
    model.eval()
    theta = [p for p in model.parameters() if p.requires_grad]
    losses = trainer.objective.losses(trainer.objective.forward_trace(batch["image"], grad=True),
                                      ft.batch_targets(model, batch))
    assert all(g is None for g in torch.autograd.grad(losses["mse"], theta, retain_graph=True, allow_unused=True))
    assert all(g is not None for g in torch.autograd.grad(losses["mse"], list(chain.parameters()), retain_graph=True))
    losses["total"].backward()
    total_grads = [p.grad.clone() for p in theta]
    model.zero_grad()
    ft.task_loss(model, model.output(model.trace(batch["image"])), ft.batch_targets(model, batch)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(total_grads, theta))  # a task-loss-only step
    assert any(bool(g.abs().sum() > 0) for g in total_grads)

    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "run"
    FinetuneTrainer(model, build_classic_chain(model, "s8"), source, None, out,
                    _config(stage="s8", lam=0.0, theta_lr=1e-3)).fit(progress=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) > 50, changed
    tuned = modinv.load_model("mobilenet-v2", weights=str(out / "best" / "forward.safetensors"), input_size=SMALL)
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in model.state_dict().items())
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert manifest["lambda"] == 0.0 and manifest["zero_lambda"] == "task" and config["zero_lambda"] == "task"
    assert config["theta_trains"] is True and config["train"]["zero_lambda"] == "task"


def test_finetune_stage_is_the_models_declared_metadata(tmp_path, detr, vit_small, image_folder, capsys):
    """The paper's stage j comes from ``model.meta.finetune_stage``; a model declaring none needs --stage."""
    assert ft.default_finetune_stage(detr) == detr.meta.finetune_stage == "dec"
    assert ft.default_finetune_stage(vit_small) == vit_small.meta.finetune_stage == "enc"
    mobilenet = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    assert mobilenet.meta.finetune_stage is None
    with pytest.raises(modinv.ModinvError, match="--stage"):
        ft.default_finetune_stage(mobilenet)
    rc = main(["finetune", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
               "--lam", "0", "--data", f"imagenet:{image_folder}", "--out", str(tmp_path / "ft"), "--steps", "1",
               "--no-progress"])
    assert rc == 2 and "declares no stage j" in capsys.readouterr().err


class _Relabelled(torch.utils.data.Dataset):
    """The same images with other labels (or none)."""

    def __init__(self, source, shift):
        self.source, self.shift, self.size = source, shift, source.size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        item = dict(self.source[i])
        if self.shift is None:
            item.pop("label")
        else:
            item["label"] = (item["label"] + self.shift) % 1000
        return item


def test_lambda_one_ignores_the_task_loss(tmp_path, image_folder, monkeypatch):
    source = open_source(f"imagenet:{image_folder}", size=SMALL)

    def run(data, name):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s8")
        FinetuneTrainer(model, chain, data, None, tmp_path / name,
                        _config(stage="s8", lam=1.0, theta_lr=1e-3)).fit(progress=False)
        return model.state_dict(), chain.state_dict()

    theta, phi = run(source, "true")
    monkeypatch.setattr(ft, "task_loss", lambda *a, **k: pytest.fail("the task loss was computed at λ = 1"))
    for name, shift in (("shifted", 7), ("none", None)):
        theta2, phi2 = run(_Relabelled(source, shift), name)
        assert all(torch.equal(theta[k], v) for k, v in theta2.items())
        assert all(torch.equal(phi[k], v) for k, v in phi2.items())
    start = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in theta.items())  # θ did train, on the MSE


def test_finetune_resumes_exactly(tmp_path, image_folder):
    """4 steps equal 2 steps resumed for 2 more: θ and its optimiser travel in the checkpoints, and
    the dropout masks (forward mode "dropout") come from the seeded, checkpointed generator."""
    source = open_source(f"imagenet:{image_folder}", size=SMALL)

    def run(out, steps, resume=False):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s16")
        config = _config(stage="s16", lam=0.5, steps=steps, batch_size=4, checkpoint_every=2, theta_lr=1e-3)
        FinetuneTrainer(model, chain, source, None, out, config).fit(resume=resume, progress=False)
        return model.state_dict(), chain.state_dict()

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    for a, b in zip(straight, resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_lambda_weights_the_gradients_as_eq3(tmp_path, image_folder):
    """θ gets λ·∂MSE + (1-λ)·∂L_OBJ, φ gets ∂MSE at weight 1."""
    source = open_source(f"imagenet:{image_folder}", size=SMALL)
    batch = next(iter(make_loader(source, batch_size=6)))
    grads = {}
    for lam in (0.25, 1.0):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s8")
        trainer = FinetuneTrainer(model, chain, source, None, tmp_path / str(lam),
                                  _config(stage="s8", lam=lam, forward_mode="eval"))
        model.eval()
        trace = trainer.objective.forward_trace(batch["image"], grad=True)
        targets = ft.batch_targets(model, batch)
        losses = trainer.objective.losses(trace, targets if lam < 1 else None)
        losses["total"].backward()
        first = next(model.parameters())
        grads[lam] = (first.grad.clone(), next(chain.parameters()).grad.clone())
        if lam < 1:  # the task part alone
            model.zero_grad()
            ft.task_loss(model, model.output(model.trace(batch["image"])), targets).backward()
            task_grad = first.grad.clone()
    theta_mse = grads[1.0][0]
    assert torch.allclose(grads[0.25][0], 0.25 * theta_mse + 0.75 * task_grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[0.25][1], grads[1.0][1])  # φ: same MSE gradient whatever λ


@pytest.mark.slow
def test_no_self_attention_vit_finetunes_with_cross_entropy(tmp_path, image_folder):
    """A few steps of the finetune command change vit-b16-noselfattn's weights and lower its CE.

    Stage bb keeps the test light (its classic inverse has 0.9 M parameters; from enc it would add
    the 85 M of enc⁻¹); the loss, λ handling and weight saving are the same for every stage."""
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", "vit-b16-noselfattn", "--weights", "random", "--input-size", "32", "32",
               "--lam", "0.5", "--stage", "bb", "--data", f"imagenet:{image_folder}", "--val-fraction", "0",
               "--out", str(out), "--steps", "3", "--batch", "6", "--theta-lr", "1e-4", "--no-progress",
               "--amp", "off"])
    assert rc == 0
    source = open_source(f"imagenet:{image_folder}", size=SMALL, label_map="imagenet")
    batch = next(iter(make_loader(source, batch_size=6)))

    def cross_entropy(model):
        with torch.no_grad():
            return float(F.cross_entropy(model.output(model.trace(batch["image"])), batch["label"]))

    start = modinv.load_model("vit-b16-noselfattn", weights="random", input_size=SMALL)
    tuned = modinv.load_model("vit-b16-noselfattn", weights=str(out / "best" / "forward.safetensors"),
                              input_size=SMALL)
    assert not tuned.self_attention
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) > 100
    assert cross_entropy(tuned) < 0.8 * cross_entropy(start)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lam"] == 0.5 and config["task"] == "classification"
    assert config["source_options"] == {"label_map": "imagenet"}
