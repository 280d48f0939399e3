"""A checkpoint's trainer state carries a SHA-256 (checksums.json beside it) that a resume checks
before reading it; a checkpoint of an older modinv without one resumes with one warning."""

from __future__ import annotations

import json
import warnings

import pytest

import modinv
from modinv.cli import main
from modinv.data import open_source
from modinv.errors import ModinvError
from modinv.fileio import sha256_file
from modinv.training import checkpoint as ckpt
from modinv.training.modular import ModularTrainer, TrainConfig

SIZE = (32, 32)
TRAIN = ["train", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
         "--arch", "auto", "--data", "samples", "--batch", "2", "--no-progress", "--amp", "off"]


@pytest.fixture(scope="module")
def mobilenet(model_cache):
    return model_cache("mobilenet-v2", weights="random", device="cpu", input_size=SIZE)


def _trainer(model, out, steps: int) -> ModularTrainer:
    data = open_source("samples", size=SIZE)
    chain = modinv.InverseChain.build(model, arch="auto", seed=0)
    config = TrainConfig(steps=steps, batch_size=2, checkpoint_every=1, amp="off")
    return ModularTrainer(model, chain, data, None, out, config)


def test_the_checksum_is_written_with_the_state(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path, steps=1).fit(progress=False)
    folder = ckpt.latest(tmp_path / "checkpoints")
    recorded = json.loads((folder / ckpt.CHECKSUM_FILE).read_text())
    assert recorded == {ckpt.STATE_FILE: sha256_file(folder / ckpt.STATE_FILE)}


@pytest.mark.parametrize("tamper", ["truncated", "replaced"])
def test_a_tampered_trainer_state_is_refused_on_resume(mobilenet, tmp_path, capsys, tamper):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "1"]) == 0
    folder = ckpt.latest(out / "checkpoints")
    state = folder / ckpt.STATE_FILE
    data = state.read_bytes()
    if tamper == "truncated":
        state.write_bytes(data[: len(data) // 2])
    else:  # another run's state, itself a valid file: only the checksum tells
        other = tmp_path / "other"
        _trainer(mobilenet, other, steps=2).fit(progress=False)
        state.write_bytes((ckpt.latest(other / "checkpoints") / ckpt.STATE_FILE).read_bytes())
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--steps", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"modinv train: error: '{state}' does not match its checksum: it is truncated, corrupt or was "
                   "replaced"]
    with pytest.raises(ModinvError, match="does not match its checksum"):
        ckpt.load_state(folder)


def test_a_checksum_file_without_the_states_checksum_is_refused(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path, steps=1).fit(progress=False)
    folder = ckpt.latest(tmp_path / "checkpoints")
    (folder / ckpt.CHECKSUM_FILE).write_text("{}")
    with pytest.raises(ModinvError, match="gives no checksum of trainer_state.pt"):
        ckpt.load_state(folder)


def test_an_old_checkpoint_without_checksums_warns_once_and_resumes(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path, steps=1).fit(progress=False)
    folder = ckpt.latest(tmp_path / "checkpoints")
    (folder / ckpt.CHECKSUM_FILE).unlink()  # as modinv wrote checkpoints before
    resumed = _trainer(mobilenet, tmp_path, steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.fit(resume=True, progress=False)
    unverified = [w for w in caught if ckpt.CHECKSUM_FILE in str(w.message)]
    assert len(unverified) == 1 and "without being verified" in str(unverified[0].message)
    assert resumed.step == 2
    latest = ckpt.latest(tmp_path / "checkpoints")  # the resumed run's checkpoints carry the checksum
    assert (latest / ckpt.CHECKSUM_FILE).is_file() and ckpt.load_state(latest)["step"] == 2
