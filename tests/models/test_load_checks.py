"""load_model checks its arguments before building anything: devices this build lacks, input
sizes that are not two positive whole numbers or would not fit in memory, seeds that are not
whole numbers in range. Each was a traceback (or a 120 GB allocation) before."""

from __future__ import annotations

import pytest
import torch

import modinv
from modinv.errors import ModinvError
from modinv.runtime import MAX_SEED, check_seed, resolve_device


def _refused(**kwargs) -> str:
    with pytest.raises(ModinvError) as info:
        modinv.load_model("mobilenet-v2", weights="random", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("device, words", [
    ("tpu", "unknown device 'tpu'"),
    ("banana", "unknown device 'banana'"),
    ("mps", "is not available in this build of torch"),
    (3.5, "unknown device 3.5"),
])
def test_devices_this_build_lacks(device, words):
    assert words in _refused(device=device)


def test_the_meta_device_builds_a_shape_only_model():
    """device="meta" is allowed for dry runs: stage shapes without memory or values."""
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=(32, 32), device="meta")
    assert model.device.type == "meta"
    trace = model.trace(torch.rand(1, 3, 32, 32))
    assert all(t.device.type == "meta" for t in trace.stages.values() if t is not trace["img"])
    assert {s: tuple(trace[s].shape[1:]) for s in model.stages} == {"s4": (24, 8, 8), "s8": (32, 4, 4),
                                                                    "s16": (96, 2, 2), "s32": (1280, 1, 1)}


@pytest.mark.parametrize("size, words", [
    ((-1, 224), "input_size must be positive, got -1×224"),
    ((0, 0), "input_size must be positive"),
    ((100000, 100000), "input size 100000×100000 is 10,000,000,000 pixels, above the 4,194,304"),
    ((4096, 4096), "above the 4,194,304 (2048×2048)"),
    ((224,), "input_size must be (height, width)"),
    ("224x224", "input_size must be (height, width)"),
    ((224.5, 224), "input_size must be (height, width)"),
])
def test_input_sizes_that_cannot_run(size, words):
    assert words in _refused(input_size=size)


@pytest.mark.parametrize("seed", ["x", 1.5, -1, 2**63 - 1, 2**64, None, True])
def test_seeds_out_of_range(seed):
    assert f"seed must be a whole number from 0 to {MAX_SEED}, got " in _refused(seed=seed)


def test_check_seed_takes_numpy_integers():
    import numpy as np

    assert check_seed(np.int64(7)) == 7 and check_seed(MAX_SEED) == MAX_SEED


def test_resolve_device_keeps_what_exists():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
