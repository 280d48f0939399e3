"""Device and precision choices (modinv.runtime): detected, never assumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


# -- freed CPU memory --------------------------------------------------------------------------------
# Run in a fresh interpreter: page faults depend on what the process's heap already holds.
FAULTS_SCRIPT = r"""
import json, resource, sys
import torch
import modinv.runtime as runtime

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def faults(mb):  # minor page faults of allocating, touching and freeing an mb-MB tensor
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(mb * 2**18)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"before": [faults(64), faults(64)], "rss_before": rss_mb()}
with runtime.reuse_freed_memory(torch.device("cpu")) as on:
    out["on"], out["reusing"] = on, runtime.reuses_freed_memory()
    faults(256)  # grows the heap; freed, it stays there, touched
    out["rss_inside"] = rss_mb()
    with runtime.reuse_freed_memory(torch.device("cpu")):  # nested blocks leave the settings to the outermost
        pass
    out["inside"] = [faults(64), faults(64), faults(32)]
out["reusing_after"] = runtime.reuses_freed_memory()
out["rss_after"] = rss_mb()
print(json.dumps(out))
"""


def test_freed_memory_serves_the_next_allocation_within_the_block():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if not seen["on"]:
        pytest.skip("not a glibc process: nothing to tune")
    if min(seen["before"]) < 1000:
        pytest.skip(f"this system backs large blocks with huge pages ({seen}): too few faults to tell reuse apart")
    assert seen["reusing"] and not seen["reusing_after"]
    assert min(seen["before"]) > 12000, seen  # 16384 pages of 4 KiB each time: mmap'd, unmapped on free
    assert max(seen["inside"]) < 1000, seen  # served from the kept heap
    assert seen["rss_inside"] > seen["rss_before"] + 200, seen  # the process kept the 256 MB it freed
    assert seen["rss_after"] < seen["rss_before"] + 64, seen  # and handed them back when the block ended


def test_freed_memory_is_left_to_the_system_where_asked(monkeypatch):
    with runtime.reuse_freed_memory(CPU, enabled=False) as on:
        assert not on and not runtime.reuses_freed_memory()
    with runtime.reuse_freed_memory(CUDA) as on:
        assert not on
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user chose glibc's settings: theirs stand
    with runtime.reuse_freed_memory(CPU) as on:
        assert not on
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")  # another allocator
    with runtime.reuse_freed_memory(CPU) as on:
        assert not on
