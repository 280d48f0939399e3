"""Two-process training on CPU (torchrun + Gloo) matches a single process with the same global batch.

Four photos and a global batch of 4: every step sees the same images in both runs (with a data set
size that does not split evenly, the last batch of an epoch differs, as with DistributedSampler).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import modinv

# A small transformer (DeiT-Tiny through the timm adapter, last block's inverse: LayerNorm, no
# BatchNorm, whose per-process statistics would make two CPU processes differ from one by design).
MODEL = "timm:deit_tiny_patch16_224"
STAGE = "f11"
ARGS = ["--model", MODEL, "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
        "--data", "samples", "--val-fraction", "0", "--steps", "4", "--batch", "4", "--stages", STAGE,
        "--log-every", "1", "--checkpoint-every", "4", "--no-progress", "--amp", "off"]


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"][STAGE] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _run([sys.executable, "-m", "modinv", "train", *ARGS, "--out", str(single)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "modinv",
          "train", *ARGS, "--out", str(double)])

    records = [json.loads(line) for line in (double / "log.jsonl").read_text().splitlines()]
    checks = [r for r in records if r.get("event") == "replica_checksums"]
    assert checks and all(len(v) == 2 and v[0] == v[1] for v in checks[0]["checksums"].values())
    config = json.loads((double / "config.json").read_text())
    assert config["world_size"] == 2

    a, b = _losses(single), _losses(double)
    assert len(a) == len(b) == 4
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)

    model = modinv.load_model(MODEL, weights="random", input_size=(32, 32))
    w1 = modinv.InverseChain.load(single / "best", model).state_dict()
    w2 = modinv.InverseChain.load(double / "best", model).state_dict()
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-5), key
