"""Device and precision choices (modinv.runtime): detected, never assumed."""

from __future__ import annotations

import pytest
import torch

import modinv.runtime as runtime
from modinv.errors import ModinvError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_settings(monkeypatch):
    assert runtime.amp_dtype(CPU, "off") is None
    assert runtime.amp_dtype(CPU, "bf16") is torch.bfloat16
    for native in (True, False):  # "auto" on a CPU follows what the CPU can do natively
        monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native)
        assert runtime.amp_dtype(CPU, "auto") is (torch.bfloat16 if native else None)
    with pytest.raises(ModinvError, match="unknown amp setting 'fp8'"):
        runtime.amp_dtype(CPU, "fp8")


def test_bf16_detection_matches_the_cpu():
    """The detection answers for this machine: no native bf16 without the CPU flags for it."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if not {"avx512bw", "avx512_bf16", "amx_bf16", "bf16"} & set(flags):  # x86 AVX-512, ARM bf16
        assert runtime.cpu_supports_bf16() is False
    assert isinstance(runtime.cpu_supports_bf16(), bool)


def test_conv_memory_format(monkeypatch):
    assert runtime.conv_memory_format(CUDA, None) is torch.channels_last
    assert runtime.conv_memory_format(CUDA, torch.bfloat16) is torch.channels_last
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.conv_memory_format(CPU, torch.bfloat16) is torch.channels_last
    assert runtime.conv_memory_format(CPU, None) is torch.contiguous_format  # float32 on a CPU: NCHW
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.conv_memory_format(CPU, torch.bfloat16) is torch.contiguous_format  # emulated bf16


def test_autocast_is_a_no_op_without_a_dtype():
    a = torch.ones(2, 2)
    with runtime.autocast(CPU, None):
        assert (a @ a).dtype is torch.float32
    with runtime.autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16


def test_resolve_device():
    assert runtime.resolve_device("cpu") == CPU
    assert runtime.resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ModinvError, match="unknown device"):
        runtime.resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ModinvError, match="CUDA is not available"):
            runtime.resolve_device("cuda")
