"""The no-self-attention ViT recipe of the paper (Section 4.5), end to end through the CLI:
top-1 before (``eval-task``), fine-tuning with cross-entropy alone (``finetune --lam 0``: θ trains
on the task loss, the by-product inverse gives it no gradient), top-1 after (``eval-task`` on the
fine-tuned weights). CPU-sized: random weights, 32×32 (2×2 patches + class token), a few steps on
the 6-image ImageNet-style folder of the training conftest.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import modinv
from modinv.cli import main
from modinv.data import make_loader, open_source

pytestmark = pytest.mark.usefixtures("one_thread")  # root conftest: one intra-op thread for these small passes
SMALL = (32, 32)
MODEL = ["--model", "vit-b16-noselfattn", "--input-size", "32", "32"]


def _other_patch_tokens_move(model: modinv.StagedModel, images: torch.Tensor, token: int) -> tuple[bool, bool]:
    """Replace patch token ``token`` at ``bb`` by noise and run bb -> enc: (did any *other* patch
    token's enc output change, did the class token's change)."""
    prefix = model.meta.num_prefix_tokens
    with torch.no_grad():
        trace = model.trace(images)
        bb = trace["bb"].clone()
        noise = torch.randn(bb[:, prefix + token].shape, generator=torch.Generator().manual_seed(0))
        bb[:, prefix + token] = 3 * noise
        edited = model.run(trace.edit("bb", bb), start="bb", end="enc")["enc"]
    others = [i for i in range(prefix, bb.shape[1]) if i != prefix + token]
    moved = not torch.allclose(edited[:, others], trace["enc"][:, others], rtol=0, atol=1e-6)
    return moved, not torch.allclose(edited[:, :prefix], trace["enc"][:, :prefix], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_no_self_attention_recipe_reports_top1_before_and_after(tmp_path, image_folder):
    data = f"imagenet:{image_folder}"
    before, after, run = tmp_path / "top1_before.json", tmp_path / "top1_after.json", tmp_path / "nosa"
    assert main(["eval-task", *MODEL, "--weights", "random", "--data", data, "--out", str(before)]) == 0
    assert main(["finetune", *MODEL, "--weights", "random", "--lam", "0", "--stage", "bb", "--data", data,
                 "--val-fraction", "0", "--out", str(run), "--steps", "4", "--batch", "6", "--theta-lr", "1e-4",
                 "--no-progress", "--amp", "off"]) == 0
    weights = run / "best" / "forward.safetensors"
    assert main(["eval-task", *MODEL, "--weights", str(weights), "--data", data, "--out", str(after)]) == 0

    # top-1 before and after, on the same 6 images with their ImageNet-1k labels
    results = [json.loads(path.read_text()) for path in (before, after)]
    for result in results:
        assert result["metric"] == "top1" and result["n"] == 6 and result["label_map"] == "imagenet"
        assert 0.0 <= result["top1"] <= 1.0 and result["top1"] == result["correct"] / 6
    assert results[1]["weights"] == str(weights)
    assert results[1]["top1"] == 1.0 > results[0]["top1"]  # measured 0/6 -> 6/6 (training images)

    # the default λ = 0 reading: θ trained on cross-entropy alone
    config = json.loads((run / "config.json").read_text())
    assert config["lambda"] == 0.0 and config["zero_lambda"] == "task" and config["theta_trains"] is True
    start = modinv.load_model("vit-b16-noselfattn", weights="random", input_size=SMALL)
    tuned = modinv.load_model("vit-b16-noselfattn", weights=str(weights), input_size=SMALL)
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) == len(start.state_dict()), len(changed)  # every tensor of θ trained
    batch = next(iter(make_loader(open_source(data, size=SMALL, label_map="imagenet"), batch_size=6)))
    with torch.no_grad():
        ce = [float(F.cross_entropy(m.output(m.trace(batch["image"])), batch["label"])) for m in (start, tuned)]
    assert ce[1] < 0.1 * ce[0], ce  # measured 7.37 -> 0.005

    # the mask is structural: after fine-tuning, patch tokens still attend only to themselves (the
    # class token to all), while the same weights with self-attention do mix the patch tokens
    assert _other_patch_tokens_move(tuned, batch["image"], token=2) == (False, True)
    with_attention = modinv.load_model("vit-b16", weights=str(weights), input_size=SMALL)
    assert _other_patch_tokens_move(with_attention, batch["image"], token=2) == (True, True)
