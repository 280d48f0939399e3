"""``StagedModel.check_images``: what ``model.trace`` accepts as images, and the one sentence it gives
for anything else (never a traceback from deep inside the network, never a silent wrong result).

Accepted: float32, and float16/bfloat16 (the adapters normalise with float32 statistics, so the
network computes in float32), with values in [0, 1]. Refused with a sentence saying how to fix it:
float64, uint8 (0–255), other dtypes, values outside [0, 1] (0–255 floats included), NaN, infinities.
"""

from __future__ import annotations

import pytest
import torch

import modinv
from modinv.errors import ModinvError

SIZE = (32, 32)


@pytest.fixture(scope="module", params=["mobilenet-v2", "vit-b16"])
def model(request) -> modinv.StagedModel:
    """A torchvision-module model and a timm token model (their own image paths), random, 32×32."""
    return modinv.load_model(request.param, weights="random", seed=0, input_size=SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))


def refused(model: modinv.StagedModel, images) -> str:
    with pytest.raises(ModinvError) as info:
        model.trace(images)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_float64_is_refused_with_the_fix(model, images):
    """float64 used to fail inside the first convolution ("expected scalar type Double")."""
    message = refused(model, images.double())
    assert "float64" in message and "images.float()" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_are_computed_in_float32(model, images, dtype):
    last = model.stages[-1]
    expected = model.trace(images.to(dtype).float())[last]
    got = model.trace(images.to(dtype))[last]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_uint8_images_get_the_division_by_255(model, images):
    message = refused(model, (images * 255).round().to(torch.uint8))
    assert "uint8" in message and "/ 255" in message


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_other_dtypes_are_refused(model, images, dtype):
    assert str(dtype).removeprefix("torch.") in refused(model, images.to(dtype))


def test_floats_in_0_255_are_refused(model, images):
    """Pixel values 0–255 in a float tensor used to pass the "[0, 1]" contract unnoticed."""
    message = refused(model, images * 255)
    assert "[0, 1]" in message and "divide them by 255" in message


@pytest.mark.parametrize("shift", [-0.5, 0.5])
def test_values_outside_0_1_are_refused_with_their_range(model, images, shift):
    message = refused(model, images + shift)
    assert "[0, 1]" in message and "range from" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused(model, images, bad):
    edited = images.clone()
    edited[1, 2, 3, 4] = bad
    message = refused(model, edited)
    assert ("NaN" in message) if bad != bad else ("range from" in message)


def test_rounding_at_the_ends_of_the_range_is_accepted(model, images):
    edited = images.clone()
    edited[0, 0, 0, 0], edited[0, 0, 0, 1] = 1 + 1e-6, -1e-6
    model.trace(edited)


def test_meta_device_images_are_one_sentence(model):
    """Was: NotImplementedError "Cannot copy out of meta tensor" from deep inside the forward pass."""
    meta = torch.zeros(1, 3, *model.input_size, device="meta")
    with pytest.raises(ModinvError, match="images are meta-device tensors, which hold no values"):
        model.trace(meta)
