"""What a resume reads carries a checksum it checks first: a checkpoint's trainer state (SHA-256 in
checksums.json beside it) and the run's config.json (the SHA-256 of its settings in it); files of an
older modinv without one resume with one warning."""

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
from modinv.training.run_folder import CONFIG_CHECKSUM, verified_run_config

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


# -- the run's config.json, which --resume reads -------------------------------------------------------

def test_config_json_carries_the_checksum_of_its_settings(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path, steps=1).fit(progress=False)
    record = json.loads((tmp_path / "config.json").read_text())
    assert len(record[CONFIG_CHECKSUM]) == 64 and verified_run_config(tmp_path)["model"] == "mobilenet-v2"


def test_an_edited_config_json_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "1"]) == 0
    config = out / "config.json"
    record = json.loads(config.read_text())
    record["train"]["batch_size"] = 4  # changed by hand: the resume would silently take it
    config.write_text(json.dumps(record, indent=2))
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--steps", "2", "--resume"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"modinv train: error: '{config}' does not match its checksum: it is truncated, corrupt or was replaced"]
    assert main(["train", "--out", str(out), "--steps", "2", "--resume"]) == 2  # settings taken from the run


def test_an_old_config_json_without_checksum_warns_once_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "1"]) == 0
    config = out / "config.json"
    record = json.loads(config.read_text())
    del record[CONFIG_CHECKSUM]  # as modinv wrote it before
    config.write_text(json.dumps(record, indent=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--out", str(out), "--steps", "2", "--resume", "--no-progress"]) == 0
    assert len([w for w in caught if "has no checksum" in str(w.message)]) == 1
    assert CONFIG_CHECKSUM in json.loads(config.read_text())  # the resumed run wrote it again, with a checksum
