"""`modinv train` killed with SIGKILL mid-run and resumed ends bit-identical to an uninterrupted run.

Three `python -m modinv train` processes (OMP_NUM_THREADS=1, CPU): the reference run of STEPS
steps, started first and left to run alongside; a run that is SIGKILLed once its ``LATEST``
pointer names a checkpoint of step >= 2 and the next checkpoint folder has begun to appear (so
the kill usually lands while that folder is half-written); and the same command with
``--resume``. The final component weights (the chain of the last checkpoint, and ``best/``),
and the optimiser states, must be *equal* (``torch.equal``, not a tolerance): on one CPU thread
every kernel is deterministic, and a resume restores every number exactly (safetensors and
``torch.save`` round-trip float32 bit for bit; the data order, the augmentation draws and the
RNG state are restored), so any difference at all is a resume bug, not float noise. The
trainer states saved with the final checkpoints (optimisers, position, RNG) must be equal too.

The run uses ``--arch auto`` (for ViT-B/16 at 32×32: a 2-block enc⁻¹ of 14 M parameters and a
conv bb⁻¹ with BatchNorm) rather than the paper's 85 M-parameter enc⁻¹, whose ~1 GB checkpoint
per step would take most of a minute on 2 cores; what is tested (checkpoint, kill, resume of
components, Adam states, BatchNorm buffers, epoch/batch position, RNG) is the same code.
These nine sample photos give 8 training images (one is held out for validation), so 8 steps at batch 2
are two epochs and a resume usually crosses an epoch boundary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modinv.inverse.chain import InverseChain
from modinv.training import checkpoint as ckpt

STEPS = 8
KILL_AFTER_STEP = 2
ATTEMPTS = 3
TIMEOUT_S = 300  # per process; the whole test takes ~25-60 s on 2 cores
COMMAND = [
    sys.executable, "-m", "modinv", "train",
    "--model", "vit-b16", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
    "--data", "samples:astronaut,chelsea,coffee,rocket,hubble_deep_field,immunohistochemistry,retina,camera,coins",
    "--augment", "--arch", "auto",
    "--steps", str(STEPS), "--checkpoint-every", "1", "--batch", "2", "--no-progress", "--amp", "off",
]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _start(out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([*COMMAND, "--out", str(out), *extra], env=_env(), stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT_S) -> int:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.log_file.close()  # type: ignore[attr-defined]
    return rc


def _log_text(out: Path) -> str:
    path = out.with_suffix(".log")
    return path.read_text()[-3000:] if path.is_file() else ""


def _latest_step(root: Path) -> int | None:
    try:
        name = (root / ckpt.POINTER).read_text().strip()
    except OSError:
        return None
    return int(name.split("-")[1]) if name.startswith("ckpt-") else None


def _train_and_kill(out: Path) -> tuple[int, int, list[str]]:
    """Start a run, SIGKILL it mid-way; (step of LATEST after the kill, return code, leftovers)."""
    proc = _start(out)
    root = out / "checkpoints"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            step = _latest_step(root)
            if step is not None and step >= KILL_AFTER_STEP:
                # Let the next checkpoint folder appear: the kill then usually hits it half-written.
                following = root / f"ckpt-{step + 1:08d}"
                wait_until = time.monotonic() + 60
                while not following.exists() and proc.poll() is None and time.monotonic() < wait_until:
                    time.sleep(0.002)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        rc = _finish(proc)
    leftovers = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return _latest_step(root) or 0, rc, leftovers


def _assert_equal(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(a), sorted(b))
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _chain_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {stage: load_file(str(folder / f"{stage}.safetensors")) for stage in manifest["components"]}


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_weights(tmp_path):
    started = time.monotonic()
    reference = _start(tmp_path / "reference")  # runs alongside the killed and the resumed run

    # -- the interrupted run: retried if the kill came too late (the run had already finished)
    for attempt in range(ATTEMPTS):
        killed = tmp_path / f"killed{attempt}"
        killed_step, rc, leftovers = _train_and_kill(killed)
        if rc == -signal.SIGKILL and KILL_AFTER_STEP <= killed_step < STEPS:
            break
        assert rc in (0, -signal.SIGKILL), f"run failed (rc {rc}):\n{_log_text(killed)}"
    else:
        pytest.fail(f"could not kill a run mid-way in {ATTEMPTS} attempts")

    # -- what the kill left: LATEST names a complete checkpoint, whatever else lies around
    root = killed / "checkpoints"
    folder = ckpt.latest(root)  # raises ModinvError for a pointer to an incomplete folder
    assert folder is not None and folder.name == f"ckpt-{killed_step:08d}", leftovers
    state = ckpt.load_state(folder)
    assert (state["step"], state["stages"]) == (killed_step, ["bb", "enc"])
    InverseChain.load(folder / "chain")  # verifies every component file against its checksum
    half_written = [name for name in leftovers if name.startswith("ckpt-") and name != folder.name]

    # -- resume to the end
    resumed_proc = _start(killed, "--resume")
    assert _finish(resumed_proc) == 0, _log_text(killed)
    assert _finish(reference) == 0, _log_text(tmp_path / "reference")
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert {"step": killed_step, "event": "resumed", "from": folder.name} in log
    # the half-written folder (if the kill hit one) was replaced; only the final checkpoint remains
    visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert visible == [ckpt.POINTER, f"ckpt-{STEPS:08d}"], (visible, half_written)

    # -- equal to the uninterrupted run, bit for bit
    final_ref, final_res = ckpt.latest(tmp_path / "reference" / "checkpoints"), ckpt.latest(root)
    assert final_ref.name == final_res.name == f"ckpt-{STEPS:08d}"
    _assert_equal(_chain_tensors(final_ref / "chain"), _chain_tensors(final_res / "chain"), "checkpoint chain")
    _assert_equal(_chain_tensors(tmp_path / "reference" / "best"), _chain_tensors(killed / "best"), "best")
    state_ref, state_res = ckpt.load_state(final_ref), ckpt.load_state(final_res)
    # the whole trainer state: step, epoch position, Adam states, best losses, non-finite counts
    # and torch's RNG (seeded from --seed at the start of a run, restored by a resume)
    _assert_equal(state_ref, state_res, "trainer state")
    best_ref = json.loads((tmp_path / "reference" / "best" / "manifest.json").read_text())["metrics"]
    assert best_ref == json.loads((killed / "best" / "manifest.json").read_text())["metrics"]
    # every component took all its updates (Adam counts them), and the run crossed an epoch
    for stage in ("bb", "enc"):
        steps = {float(s["step"]) for s in state_ref["optimizers"][stage]["state"].values()}
        assert steps == {float(STEPS)}, (stage, steps)
    assert (state_ref["step"], state_ref["epoch"]) == (STEPS, 1)
    print(f"killed at LATEST={folder.name} (attempt {attempt + 1}), left over: {half_written}; "
          f"{time.monotonic() - started:.1f} s")


def test_interrupted_chain_save_leaves_the_previous_chain_readable(tmp_path, monkeypatch):
    """Training rewrites best/ at every improvement; a run stopped while it does so must leave the
    previous chain loadable (not new weights beside an old <stage>.json whose checksum no longer
    matches). Every file is written under a temporary name first and renamed at the end."""
    import modinv
    import modinv.inverse.storage as storage

    model = modinv.load_model("mobilenet-v2", weights="random", input_size=(32, 32))
    chain = InverseChain.build(model, arch="auto", seed=0)
    chain.save(tmp_path / "best")
    before = _chain_tensors(tmp_path / "best")
    with torch.no_grad():
        for p in chain.parameters():
            p.add_(1.0)
    calls = []

    def interrupted(path, obj):  # the first <stage>.json, written after its new weights
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        chain.save(tmp_path / "best")
    monkeypatch.undo()
    assert calls and calls[0].name.startswith(".s4.json.tmp-")
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.startswith(".")) == []  # no temporaries
    _assert_equal(before, _chain_tensors(tmp_path / "best"), "best")
    InverseChain.load(tmp_path / "best", model)  # checksums match
