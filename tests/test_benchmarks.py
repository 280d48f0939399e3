"""benchmarks/throughput.py end to end on a tiny model: both configurations, every phase, FLOPs
counted once, MFU against the peaks it measured, and the step's speed-up over the plain path.

A smoke test of the measuring machinery, not of speed (no timing is asserted).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from modinv.runtime import reuse_freed_memory

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARKS / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "throughput", module)
    spec.loader.exec_module(module)
    real_peak = module.matmul_peak
    # Small products are enough to exercise the peak measurement; big ones take seconds.
    monkeypatch.setattr(module, "matmul_peak", lambda dtype, device: real_peak(dtype, device, 0.0, 128))
    return module


def test_throughput_reports_both_paths_with_flops_mfu_and_speedup(throughput, tmp_path, capsys):
    argv = ["--model", "mobilenet-v2", "--batch", "2", "--size", "32", "32", "--device", "cpu",
            "--warmup", "1", "--steps", "1", "--out-dir", str(tmp_path), "--profile-headroom-mb", "16"]
    assert throughput.main(argv) == 0
    result = json.loads((tmp_path / "mobilenet-v2-cpu.json").read_text())
    with reuse_freed_memory(torch.device("cpu")) as keeps_memory:
        pass
    assert result["input_size"] == [32, 32] and result["batch"] == 2
    rows = {(r["config"], r["phase"]): r for r in result["rows"]}
    phases = ["frozen forward", "s4⁻¹ alone", "s8⁻¹ alone", "s16⁻¹ alone", "s32⁻¹ alone", "modular step"]
    assert set(rows) == {(c, p) for c in ("plain", "default") for p in phases}
    peaks = result["environment"]["matmul_peaks"]
    assert peaks["float32"]["flops_per_s"] > 0 and peaks["bfloat16"]["flops_per_s"] > 0
    for (config, phase), row in rows.items():
        assert row["flops_per_image"] > 0, (config, phase)
        assert row["flops_per_image"] == rows["plain", phase]["flops_per_image"]  # the same work in both paths
        assert row["images_per_s"] == pytest.approx(2 / (row["ms_per_batch"] / 1e3))
        assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_image"] * row["images_per_s"])
        assert row["mfu"] == pytest.approx(row["achieved_flops_per_s"] / peaks[row["compute_dtype"]]["flops_per_s"])
        assert row["peak_memory_mb"] > 0
        assert row["speedup_vs_plain"] == pytest.approx(row["images_per_s"] / rows["plain", phase]["images_per_s"])
        assert 0 <= row["copy_share"] < 1 and min(row["copy_calls"], row["cast_calls"], row["reorder_calls"]) >= 0
        assert row["profiled_page_faults"] >= 0
        # heap room before profiling only where freed memory stays in the process (the default's block)
        assert row["profile_headroom_mb"] == (16 if config == "default" and keeps_memory else 0)
    for config in ("plain", "default"):  # a step copies (the engine saves BatchNorm buffers with clone: copy_)
        step = rows[config, "modular step"]
        assert step["copy_share"] > 0 and step["copy_calls"] >= step["reorder_calls"] > 0
    # the step is the sum of its parts: its FLOPs are the frozen forward's plus every component's
    parts = sum(rows["plain", p]["flops_per_image"] for p in phases[:-1])
    assert rows["plain", "modular step"]["flops_per_image"] == pytest.approx(parts, rel=1e-6)
    assert result["speedup_vs_plain"] == rows["default", "modular step"]["speedup_vs_plain"]
    assert result["configs"]["plain"]["amp_dtype"] == "float32"
    assert "modular step, default vs plain" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--model", "mobilenet-v2", "vit-b16", "--batch", "1", "2", "3"],
                                  ["--model", "mobilenet-v2", "--warmup", "0"]])
def test_bad_arguments_are_refused(throughput, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        throughput.main(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err
