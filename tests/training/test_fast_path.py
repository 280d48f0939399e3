"""The fast training path keeps the numbers: 20 steps of a tiny chain trained the plain way
(float32, eager, layouts as they come, for-loop Adam) and the fast way (fused Adam, convolutions in
the device's fast memory format, bf16 autocast where asked) give the same losses within a stated
tolerance. Also the pieces of the fast path: the layout hooks and the fused optimiser.

The chain: MobileNet-V2 (random weights, 32×32) components s4⁻¹ and s8⁻¹ (the deeper ones reach
losses of 1e-5 within a few steps at random weights, where relative differences mean nothing).
Tolerances, relative, on the loss of every component: the first step (the same weights: forward
numerics only) within ``*_FIRST_RTOL``, every step of the 20 within ``*_RTOL`` (later steps carry
the earlier steps' rounding differences, which Adam amplifies: it follows the sign of tiny gradients).
- float32 fast path (the default on CPUs without native bf16): first step 1e-5 (measured: 0), all
  steps 1e-4 for MobileNet (measured at most 5e-6: fused Adam's rounding, 1e-6 alone, plus the
  NCHW pinning) and 1e-2 for ViT bb⁻¹ (measured 4e-3: its token grid changes memory layout, i.e.
  the kernels' order of sums);
- bf16 autocast: first step 1e-2 (measured 1.3e-3), all steps 0.25 (measured: ViT bb⁻¹ 2.3%,
  MobileNet s4⁻¹ 0.6%, s8⁻¹ 17% — bf16's ~0.3% rounding of gradients sends Adam onto a slightly
  slower path on this tiny problem); the losses themselves are computed in float32.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import modinv
import modinv.runtime as runtime
from modinv.data import open_source
from modinv.distributed import SINGLE
from modinv.training.classic import build_classic_chain
from modinv.training.finetune import FinetuneConfig, FinetuneTrainer
from modinv.training.modular import ModularTrainer, TrainConfig
from modinv.training.optim import make_optimizer
from modinv.training.parallel import set_conv_layout, wrap_for_training

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = (32, 32)
STEPS = 20
STAGES = ["s4", "s8"]
FLOAT32_FIRST_RTOL, FLOAT32_RTOL, TOKEN_GRID_FLOAT32_RTOL = 1e-5, 1e-4, 1e-2
BF16_FIRST_RTOL, BF16_RTOL = 1e-2, 0.25


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    images = torch.stack([item["image"] for item in open_source("samples", size=SIZE)])
    return [images[:2], images[2:4]]  # two batches of two, as the config says


def _losses(model, batches, tmp_path, plain: bool, **settings) -> list[dict[str, float]]:
    """Per-step losses of 20 modular steps on ``batches`` in turn (the trainer's data set is unused)."""
    settings = {"stages": STAGES, **settings}
    chain = modinv.InverseChain.build(model, arch="auto", seed=0, stages=settings["stages"])
    config = TrainConfig(steps=STEPS, batch_size=2, **settings)
    trainer = ModularTrainer(model, chain, open_source("samples", size=SIZE), None, tmp_path, config)
    if plain:
        trainer.optimizers = {s: make_optimizer(chain.components[s], trainer.lrs[s], fused=False)
                              for s in trainer.stages}
    return [trainer.train_step({"image": batches[i % len(batches)]}) for i in range(STEPS)]


def _assert_close(fast: list[dict[str, float]], plain: list[dict[str, float]], first_rtol: float, rtol: float) -> None:
    assert len(fast) == len(plain) == STEPS
    for step, (f, p) in enumerate(zip(fast, plain)):
        assert f.keys() == p.keys()
        for stage in p:
            assert f[stage] == pytest.approx(p[stage], rel=first_rtol if step == 0 else rtol), f"step {step}, {stage}⁻¹"
    assert all(plain[-1][s] < plain[0][s] for s in plain[0])  # it trained: the comparison means something


def test_float32_fast_path_losses_agree_with_plain(mobilenet, batches, tmp_path):
    plain = _losses(mobilenet, batches, tmp_path / "plain", True, amp="off", channels_last=False)
    fast = _losses(mobilenet, batches, tmp_path / "fast", False, amp="off")
    _assert_close(fast, plain, FLOAT32_FIRST_RTOL, FLOAT32_RTOL)


def test_bf16_fast_path_losses_agree_with_plain_float32(mobilenet, batches, tmp_path):
    plain = _losses(mobilenet, batches, tmp_path / "plain", True, amp="off", channels_last=False)
    fast = _losses(mobilenet, batches, tmp_path / "fast", False, amp="bf16")
    _assert_close(fast, plain, BF16_FIRST_RTOL, BF16_RTOL)


def test_token_grid_components_agree_too(vit_small, samples_small, tmp_path):
    """ViT bb⁻¹ lays tokens out on a grid (channels-last by its strides): the layout hook converts it."""
    images = torch.stack([samples_small[i]["image"] for i in range(4)])
    settings = dict(stages=["bb"])
    plain = _losses(vit_small, [images[:2], images[2:]], tmp_path / "p", True, amp="off", channels_last=False,
                    **settings)
    fast = _losses(vit_small, [images[:2], images[2:]], tmp_path / "f", False, amp="off", **settings)
    _assert_close(fast, plain, FLOAT32_FIRST_RTOL, TOKEN_GRID_FLOAT32_RTOL)


def _seen_layouts(component: nn.Module, x: torch.Tensor) -> list[bool]:
    """Whether each 2-D convolution's input was contiguous NCHW in one forward pass."""
    seen: list[bool] = []
    handles = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
               for m in component.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    component(x)
    for h in handles:
        h.remove()
    return seen


def test_layout_hooks_in_training_only(monkeypatch):
    component = nn.Sequential(nn.ConvTranspose2d(8, 4, 2, 2), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    tokens = torch.randn(2, 6, 8)  # B×N×D laid out on a 2×3 grid: channels-last strides
    grid = tokens.transpose(1, 2).reshape(2, 8, 2, 3)
    assert not grid.is_contiguous()
    module = wrap_for_training(component, torch.device("cpu"), SINGLE, channels_last=True, amp=None)
    assert module is component and all(_seen_layouts(component, grid))  # float32 on a CPU: NCHW
    with torch.no_grad():
        assert not _seen_layouts(component, grid)[0]  # forward-only passes keep their layout
    wrap_for_training(component, torch.device("cpu"), SINGLE, channels_last=True)  # a second wrap replaces
    assert len(component[0]._forward_pre_hooks) == 1
    assert set_conv_layout(component, None) == 2 and not component[0]._forward_pre_hooks
    assert not _seen_layouts(component, grid)[0]
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)  # bf16 on a CPU with native bf16
    wrap_for_training(component, torch.device("cpu"), SINGLE, channels_last=True, amp=torch.bfloat16)
    assert component[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(_seen_layouts(component, torch.randn(2, 8, 2, 3)))
    set_conv_layout(component, None)


def test_fused_adam_on_cpu_updates_like_plain_adam():
    torch.manual_seed(0)
    a = nn.Linear(16, 8)
    b = nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    fused, plain = make_optimizer(a, 1e-2), make_optimizer(b, 1e-2, fused=False)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"] and plain.defaults["foreach"] is False
    x = torch.randn(4, 16)
    for _ in range(5):
        for module, optimizer in ((a, fused), (b, plain)):
            optimizer.zero_grad()
            module(x).square().mean().backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_frozen_forward_runs_a_cast_copy_and_leaves_the_model(mobilenet, batches, tmp_path):
    """bf16: the frozen forward runs a copy cast once (no per-call weight casts); the stages come in
    bf16, the image (bb⁻¹'s target) in float32. float32 on a CPU: nothing to change, no copy."""
    chain = modinv.InverseChain.build(mobilenet, arch="auto", seed=0, stages=STAGES)
    data = open_source("samples", size=SIZE)
    trainer = ModularTrainer(mobilenet, chain, data, None, tmp_path / "bf16",
                             TrainConfig(steps=1, batch_size=2, stages=STAGES, amp="bf16"))
    frozen = trainer.frozen_model
    assert frozen is not mobilenet and all(p.dtype == torch.bfloat16 for p in frozen.parameters())
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in mobilenet.parameters())
    trace = trainer.frozen_trace(batches[0])
    assert trace["img"].dtype == torch.float32 and all(trace[s].dtype == torch.bfloat16 for s in mobilenet.stages)
    plain = ModularTrainer(mobilenet, chain, data, None, tmp_path / "fp32",
                           TrainConfig(steps=1, batch_size=2, stages=STAGES, amp="off"))
    assert plain.frozen_model is mobilenet


def test_finetuning_theta_keeps_float32_master_weights(image_folder, tmp_path):
    """λ fine-tuning trains θ: the frozen forward is the model itself (its weights must be current),
    and the saved forward weights are contiguous float32 under bf16 autocast too."""
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SIZE)
    source = open_source(f"imagenet:{image_folder}", size=SIZE)
    config = FinetuneConfig(stage="s8", lam=0.0, steps=2, batch_size=6, val_every=1000, checkpoint_every=1000,
                            amp="bf16")
    trainer = FinetuneTrainer(model, build_classic_chain(model, "s8"), source, None, tmp_path, config)
    assert trainer.objective.theta_trains and trainer.frozen_model is model
    trainer.fit(progress=False)
    saved = load_file(tmp_path / "best" / "forward.safetensors")
    floats = [v for v in saved.values() if v.is_floating_point()]  # (BatchNorm's counters are int64)
    assert floats and all(v.dtype == torch.float32 and v.is_contiguous() for v in floats)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_training_loop_keeps_freed_memory_for_the_next_step_unless_told_not_to(mobilenet, tmp_path, monkeypatch):
    with runtime.reuse_freed_memory(torch.device("cpu")) as possible:
        pass  # False off glibc, or where the user chose malloc's settings: then never in effect
    seen: list[bool] = []
    real_step = ModularTrainer.train_step

    def step(self, batch):
        seen.append(runtime.reuses_freed_memory())
        return real_step(self, batch)

    monkeypatch.setattr(ModularTrainer, "train_step", step)
    for reuse in (True, False):
        out = tmp_path / str(reuse)
        chain = modinv.InverseChain.build(mobilenet, arch="auto", seed=0, stages=["s8"])
        config = TrainConfig(steps=2, batch_size=2, stages=["s8"], reuse_memory=reuse)
        ModularTrainer(mobilenet, chain, open_source("samples", size=SIZE), None, out, config).fit(progress=False)
        assert json.loads((out / "config.json").read_text())["train"]["reuse_memory"] is reuse
    assert seen == [possible, possible, False, False]
    assert not runtime.reuses_freed_memory()  # the loop's block ended with it
