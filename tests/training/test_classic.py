"""The classic full-path baseline (``modinv train --classic``), CPU-sized: MobileNet-V2, random weights, 32×32."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import modinv
from modinv.analysis.evaluate import evaluate_chain
from modinv.cli import main
from modinv.data import open_source
from modinv.training.classic import build_classic_chain, classic_path

pytestmark = pytest.mark.usefixtures("one_thread")  # root conftest: one intra-op thread for these small passes
SMALL = (32, 32)
FOUR = "samples:astronaut,chelsea,coffee,rocket"  # the four photos the measured numbers below come from


def test_classic_training_lowers_image_mse_and_its_chain_loads(tmp_path):
    out = tmp_path / "classic"
    rc = main(["train", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
               "--classic", "s16", "--data", FOUR, "--val-data", FOUR, "--out", str(out),
               "--steps", "12", "--batch", "4", "--val-every", "6", "--checkpoint-every", "6", "--no-progress",
               "--amp", "off"])
    assert rc == 0
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["training"] == "classic" and manifest["classic_stage"] == "s16"
    chain = modinv.InverseChain.load(out / "best", model)
    assert list(chain.stages) == ["s4", "s8", "s16"] == classic_path(model, "s16")[::-1]
    assert chain.component_meta["s16"]["training"]["method"] == "classic"
    assert chain.end_to_end_stage == "s16"  # evaluate/reconstruct then report s16 only
    result = evaluate_chain(model, chain, open_source(FOUR, size=SMALL), progress=False)
    assert list(result["stages"]) == ["s16"]
    samples = open_source(FOUR, size=SMALL)
    images = torch.stack([samples[i]["image"] for i in range(len(samples))])
    fresh = build_classic_chain(model, "s16", seed=0).eval()  # the run's initial chain (same seed)
    with torch.no_grad():
        trace = model.trace(images)
        before = F.mse_loss(fresh.reconstruct(trace, "s16"), images)
        after = F.mse_loss(chain.reconstruct(trace, "s16"), images)
    assert after < 0.9 * before, (float(before), float(after))  # measured 0.064 -> 0.052 (untrained: 1.0×)
    validations = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                   if r.get("event") == "validation"]
    assert float(after) == pytest.approx(min(r["val_loss"]["s16"] for r in validations), rel=1e-5)
