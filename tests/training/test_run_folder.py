"""A run folder is never taken over by accident (issue 17): refusal of a second run, --overwrite,
the lock (in use, stale, released on errors), options checked before any work, --resume with
other settings, validation without a usable image, skipped files in the log, and a disk that fills
up during a checkpoint.

CPU-sized: MobileNet-V2 (random weights) at 32×32 with ``arch="auto"`` components (~0.1 M
parameters), batch 2, one or two steps; the rules are the engine's, the same for every objective.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

import modinv
from modinv.cli import main
from modinv.data import open_source
from modinv.data.synthetic import make_image_folder
from modinv.errors import ModinvError
from modinv.training import checkpoint as ckpt
from modinv.training.modular import ModularTrainer, TrainConfig
from modinv.training.run_folder import LOCK_FILE, RunLock

pytestmark = pytest.mark.usefixtures("one_thread", "model_cache")
SIZE = (32, 32)
MOBILENET = ["--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
             "--arch", "auto"]
TRAIN = ["train", *MOBILENET, "--data", "samples", "--batch", "2", "--no-progress", "--amp", "off"]


@pytest.fixture(scope="module")
def mobilenet(model_cache):
    return model_cache("mobilenet-v2", weights="random", device="cpu", input_size=SIZE)


def _trainer(model, out, val=True, **settings) -> ModularTrainer:
    data = open_source("samples", size=SIZE)
    chain = modinv.InverseChain.build(model, arch="auto", seed=0)
    config = TrainConfig(**(dict(steps=2, batch_size=2, val_every=2, checkpoint_every=1, amp="off") | settings))
    return ModularTrainer(model, chain, data, data if val else None, out, config)


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _error(argv: list[str], capsys) -> str:
    """Run the CLI: status 2 and one traceback-free ``modinv CMD: error: ...`` line (argparse's
    after its usage lines); returns the message."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: a bad option value
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    prefix = f"modinv {argv[0]}: error: "
    lines = err.strip().splitlines()
    assert lines[-1].startswith(prefix) and (len(lines) == 1 or lines[0].startswith("usage:")), err
    return lines[-1][len(prefix):]


def _finished_run(out: Path, capsys, *extra: str) -> dict[str, str]:
    assert main([*TRAIN, "--out", str(out), "--steps", "1", *extra]) == 0
    capsys.readouterr()
    return _files(out)


# -- 1. a new run never replaces an old one ----------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["--steps", "1"],
    ["--steps", "1", "--classic", "s8"],
])
def test_a_new_run_into_a_finished_run_is_refused(tmp_path, capsys, command):
    out = tmp_path / "run"
    before = _finished_run(out, capsys)
    message = _error([*TRAIN, "--out", str(out), *command], capsys)
    assert f"run folder '{out}' is not empty" in message
    assert "--resume" in message and "--overwrite" in message
    assert _files(out) == before  # best/, checkpoints/, config.json and log.jsonl untouched
    assert not (out / LOCK_FILE).exists()


def test_finetune_inherits_the_refusal_and_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    before = _finished_run(out, capsys)
    finetune = ["finetune", *MOBILENET, "--lam", "0", "--zero-lambda", "frozen", "--stage", "s8", "--data", "samples",
                "--steps", "1", "--batch", "2", "--no-progress", "--amp", "off", "--out", str(out)]
    assert "is not empty" in _error(finetune, capsys)
    assert _files(out) == before
    assert main([*finetune, "--overwrite"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "finetune" and config["train"]["overwrite"] is True
    assert (out / "best" / "forward.safetensors").is_file()


def test_overwrite_removes_only_what_the_previous_run_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    _finished_run(out, capsys)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "ckpt-00000099").mkdir()  # an old run's leftover: removed with checkpoints/
    with pytest.warns(UserWarning, match=r"removed best, checkpoints, log.jsonl, config.json of the previous run"):
        assert main([*TRAIN, "--out", str(out), "--steps", "2", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    records = _records(out)
    removed = ["best", "checkpoints", "log.jsonl", "config.json"]
    assert records[0] == {"step": 0, "event": "overwrote", "removed": removed}
    assert [r["step"] for r in records if r.get("event") == "stopped"] == [2]  # one run in the log, not two
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [ckpt.POINTER, "ckpt-00000002"]
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 2
    message = _error([*TRAIN, "--out", str(out), "--steps", "2", "--overwrite", "--resume"], capsys)
    assert "argument --resume: not allowed with argument --overwrite" in message


@pytest.mark.parametrize("user_files", [
    {"config.json": '{"lr": 0.1}\n'},  # the user's own config, no run ever wrote here
    {"config.json": "[1, 2]\n"},
    {"best/notes.txt": "mine\n"},
    {"log.jsonl": "my diary\n"},
    {"checkpoints/model.pt": "x"},
])
def test_overwrite_keeps_files_no_run_wrote(tmp_path, capsys, user_files):
    """Was: --overwrite into a folder that held no run deleted the user's best/ and config.json."""
    out = tmp_path / "mine"
    for name, text in user_files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _files(out)
    message = _error([*TRAIN, "--out", str(out), "--steps", "1", "--overwrite"], capsys)
    assert message.startswith("--overwrite removes only what a run wrote, and ") and "are not a run's files" in message
    assert _files(out) == before


def test_overwrite_of_a_run_with_a_foreign_best_keeps_everything(tmp_path, capsys):
    out = tmp_path / "run"
    _finished_run(out, capsys)
    (out / "best" / "manifest.json").write_text("{}")  # not a chain's manifest any more
    before = _files(out)
    assert "best in" in _error([*TRAIN, "--out", str(out), "--steps", "1", "--overwrite"], capsys)
    assert _files(out) == before


@pytest.mark.parametrize("state", ["missing", "empty", "user files"])
def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys, state):
    """Was: a mistyped --out with --resume trained from step 0 and exited 0."""
    out = tmp_path / "typo"
    if state != "missing":
        out.mkdir()
    if state == "user files":
        (out / "data.csv").write_text("1\n")
    message = _error([*TRAIN, "--out", str(out), "--steps", "1", "--resume"], capsys)
    assert message == (f"there is no run to resume in '{out}' (no config.json, no checkpoint); check --out, "
                       "or start the run without --resume")
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("config", [None, "[]", '{"model": "mobilenet-v2"}'])
def test_resume_without_the_run_config_cannot_change_settings(mobilenet, tmp_path, capsys, config):
    """Was: deleting config.json let a resume continue with another --data and --batch."""
    out = tmp_path / "run"
    _finished_run(out, capsys)
    (out / "config.json").unlink()
    if config is not None:
        (out / "config.json").write_text(config)
    before = _files(out)
    message = _error([*TRAIN, "--out", str(out), "--steps", "2", "--batch", "3", "--resume"], capsys)
    assert message.startswith(f"cannot resume the run in '{out}': its config.json is missing or is not a run's")
    assert _files(out) == before
    with pytest.raises(ModinvError, match="config.json is missing"):
        _trainer(mobilenet, out).fit(resume=True, progress=False)


def test_resume_and_overwrite_together_are_refused(mobilenet, tmp_path):
    with pytest.raises(ModinvError, match="not both"):
        _trainer(mobilenet, tmp_path).fit(resume=True, overwrite=True, progress=False)


def test_the_api_refuses_too_and_a_user_file_alone_makes_a_folder_non_empty(mobilenet, tmp_path):
    _trainer(mobilenet, tmp_path / "run").fit(progress=False)
    with pytest.raises(ModinvError, match="is not empty .*best, checkpoints, config.json, log.jsonl"):
        _trainer(mobilenet, tmp_path / "run").fit(progress=False)
    _trainer(mobilenet, tmp_path / "run", overwrite=True).fit(progress=False)  # config.overwrite
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2\n")
    (tmp_path / "other" / ".hidden").write_text("")  # hidden files do not count
    with pytest.raises(ModinvError, match=r"it holds data.csv\)"):
        _trainer(mobilenet, tmp_path / "other").fit(progress=False)
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_text("")
    _trainer(mobilenet, tmp_path / "hidden").fit(progress=False)


# -- 1. the lock --------------------------------------------------------------------------------------
def _lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": None, "token": "x"})


@pytest.fixture()
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_folder_in_use_is_refused(mobilenet, tmp_path, live_pid, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(_lock_of(live_pid))
    with pytest.raises(ModinvError, match=rf"run folder '{out}' is in use by process {live_pid} on host"):
        _trainer(mobilenet, out).fit(progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the lock kept
    (out / LOCK_FILE).write_text(_lock_of(12345, host="another-host"))  # cannot tell: refused
    message = _error([*TRAIN, "--out", str(out), "--steps", "1"], capsys)
    assert "is in use by process 12345 on host 'another-host'" in message


def test_a_stale_lock_is_taken_over_with_a_warning(mobilenet, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(_lock_of(dead.pid))
    with pytest.warns(RuntimeWarning, match=rf"taking over the stale lock .* of process {dead.pid} on host"):
        _trainer(mobilenet, out, val=False).fit(progress=False)
    assert not (out / LOCK_FILE).exists() and (out / "best" / "manifest.json").is_file()


def test_the_lock_names_its_owner_while_the_run_writes(mobilenet, tmp_path):
    seen = []
    trainer = _trainer(mobilenet, tmp_path, val=False)
    trainer.on_record = lambda record: seen.append(json.loads((tmp_path / LOCK_FILE).read_text()))
    trainer.fit(progress=False)
    assert seen and all(s["pid"] == os.getpid() and s["host"] == socket.gethostname() for s in seen)
    assert not (tmp_path / LOCK_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("error", [KeyboardInterrupt, ModinvError])
def test_the_lock_is_released_on_errors(mobilenet, tmp_path, error):
    trainer = _trainer(mobilenet, tmp_path)
    held = []

    def failing(batch):
        held.append((tmp_path / LOCK_FILE).is_file())
        raise error("stop")

    trainer.train_step = failing
    with pytest.raises(error):
        trainer.fit(progress=False)
    assert held == [True] and not (tmp_path / LOCK_FILE).exists()
    _trainer(mobilenet, tmp_path).fit(resume=True, progress=False)  # the folder is free again


def test_only_one_of_many_takes_the_lock(tmp_path):
    start, won, lost = threading.Barrier(8), [], []

    def take():
        lock = RunLock(tmp_path)
        start.wait()
        try:
            won.append(lock.acquire())
        except ModinvError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7 and all("is in use by process" in m for m in lost)
    won[0].release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- 2. options checked before any work ------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [
    ("--steps", "0"), ("--epochs", "0"), ("--batch", "0"), ("--val-every", "0"), ("--checkpoint-every", "0"),
    ("--log-every", "0"), ("--val-batches", "0"), ("--num-workers", "-1"), ("--max-minutes", "0"),
    ("--max-minutes", "-1"), ("--lr", "s4=-1"), ("--lr", "s4=0"), ("--lr", "s4=nan"), ("--lr", "s4"),
    ("--val-fraction", "1"),
])
def test_bad_option_values_exit_2_naming_the_option(tmp_path, capsys, option, value):
    length = [] if option in ("--steps", "--epochs") else ["--steps", "1"]
    message = _error([*TRAIN, "--out", str(tmp_path / "run"), *length, option, value], capsys)
    assert f"argument {option}:" in message
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("extra,expected", [
    (["--lr", "nosuchstage=1e-3"], "--lr names 'nosuchstage', which is not a stage of 'mobilenet-v2'"),
    (["--stages", "s4", "nosuch"], "--stages names 'nosuch'"),
    (["--stages", "s4", "--lr", "s8=1e-3"], "a learning rate (--lr) is given for 's8', which this run does not train"),
    (["--classic", "s8", "--lr", "s16=1e-3"], "a learning rate (--lr) is given for 's16', which this run does not"),
])
def test_stage_names_are_checked_against_the_model(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    assert expected in _error([*TRAIN, "--out", str(out), "--steps", "1", *extra], capsys)
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("settings,message", [
    ({"steps": 0}, "steps must be a whole number of at least 1, got 0"),
    ({"steps": None, "epochs": 0}, "epochs must be a whole number of at least 1"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"val_every": 0}, "val_every must be"),
    ({"checkpoint_every": 0}, "checkpoint_every must be"),
    ({"num_workers": -1}, "num_workers must be a whole number of at least 0"),
    ({"lr": {"s4": -1.0}}, "learning rate of 's4' must be a positive number"),
    ({"lr": {"nosuch": 1e-3}}, r"learning rate \(--lr\) is given for 'nosuch'"),
])
def test_configs_that_cannot_run_are_refused_by_the_api(mobilenet, tmp_path, settings, message):
    with pytest.raises(ModinvError, match=message):
        _trainer(mobilenet, tmp_path, **settings)
    assert not any(tmp_path.iterdir())


# -- 3. --resume with other settings -------------------------------------------------------------------
def test_resume_with_other_settings_is_refused_listing_them(tmp_path, capsys):
    out = tmp_path / "run"
    before = _finished_run(out, capsys)
    message = _error([*TRAIN, "--out", str(out), "--steps", "2", "--resume", "--batch", "4", "--seed", "1"], capsys)
    assert message.startswith(f"cannot resume the run in '{out}' with other settings than its config.json: ")
    assert "batch_size 2 (run) vs 4 (now)" in message and "seed 0 (run) vs 1 (now)" in message
    assert "steps" not in message  # more steps are allowed
    assert _files(out) == before


def test_resume_with_a_new_learning_rate_trains_at_that_rate(mobilenet, tmp_path):
    """Adam moves each weight by about lr per step: at 1e-12 the resumed step leaves the weights
    as they were (at the checkpoint's 1e-3 they would move by ~1e-3)."""
    _trainer(mobilenet, tmp_path, val=False, steps=2, lr={"s4": 1e-3}).fit(progress=False)
    trainer = _trainer(mobilenet, tmp_path, val=False, steps=3, lr={"s4": 1e-12})
    before = {}

    def step(batch, original=trainer.train_step):
        before.update({n: p.detach().clone() for n, p in trainer.chain.components["s4"].named_parameters()})
        return original(batch)

    trainer.train_step = step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(resume=True, progress=False)
    assert trainer.step == 3 and before
    moved = max(float((p.detach() - before[n]).abs().max())
                for n, p in trainer.chain.components["s4"].named_parameters())
    assert moved < 1e-9, moved  # at the checkpoint's rate: ~1e-3
    assert [g["lr"] for g in trainer.optimizers["s4"].param_groups] == [1e-12]
    assert any("resumed with changed settings" in str(w.message) for w in caught)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["learning_rates"]["s4"] == 1e-12 and config["train"]["lr"] == {"s4": 1e-12}
    state = ckpt.load_state(ckpt.latest(tmp_path / "checkpoints"))  # the resumed run's checkpoint
    assert state["optimizers"]["s4"]["param_groups"][0]["lr"] == 1e-12
    assert state["optimizers"]["s8"]["param_groups"][0]["lr"] == trainer.lrs["s8"]  # unchanged rates stay
    changed = [r for r in _records(tmp_path) if r.get("event") == "settings_changed"]
    assert changed and changed[0]["changes"]["train.steps"] == {"from": 2, "to": 3}
    assert changed[0]["changes"]["learning_rates"]["to"]["s4"] == 1e-12


# -- 4. validation without a usable image; skipped files -----------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``good``: 6 images; ``broken``: 2 unusable files; ``mixed``: 6 images and 2 unusable files."""
    root = tmp_path_factory.mktemp("folders")
    make_image_folder(root / "good", per_class=2, size=SIZE)
    make_image_folder(root / "mixed", per_class=2, size=SIZE)
    for name in ("broken", "mixed"):
        (root / name).mkdir(exist_ok=True)
        (root / name / "zz_text.jpg").write_text("not an image")
        (root / name / "zz_empty.png").write_bytes(b"")
    return root


def _folder_trainer(model, out, train: Path, val: Path | None, **settings) -> ModularTrainer:
    chain = modinv.InverseChain.build(model, arch="auto", seed=0)
    config = TrainConfig(**(dict(steps=2, batch_size=8, val_every=2, checkpoint_every=2, amp="off") | settings))
    return ModularTrainer(model, chain, open_source(f"folder:{train}", size=SIZE),
                          None if val is None else open_source(f"folder:{val}", size=SIZE), out, config)


def test_validation_without_a_usable_image_is_an_error(mobilenet, folders, tmp_path):
    trainer = _folder_trainer(mobilenet, tmp_path, folders / "good", folders / "broken")
    with pytest.warns(UserWarning, match="skipped unusable image files: 2 of 2"):
        with pytest.raises(ModinvError, match=r"the validation data gave no usable image \(all 2 files read were "
                                              r"unusable, e\.g\. .*zz_"):
            trainer.fit(progress=False)
    assert not (tmp_path / "best").exists()  # never a loss of 0 nor an untrained chain as the best
    assert not (tmp_path / LOCK_FILE).exists()


def test_skipped_files_are_counted_and_each_logged(mobilenet, folders, tmp_path):
    """One batch of the 8 files per pass (6 images): 2 training passes and 2 validations, each
    summarised in one line; every skipped file is logged once per kind of pass, with its reason."""
    trainer = _folder_trainer(mobilenet, tmp_path, folders / "mixed", folders / "mixed", val_every=1)
    with pytest.warns(UserWarning, match="skipped unusable image files: 2 of 8") as caught:
        trainer.fit(progress=False)
    summaries = [w for w in caught if "skipped unusable image" in str(w.message)]
    assert len(summaries) == 4 and all("skipped unusable image files: 2 of 8" in str(w.message) for w in summaries)
    validations = [r for r in _records(tmp_path) if r.get("event") == "validation"]
    assert [r["skipped"] for r in validations] == [2, 2]
    skipped = [r for r in _records(tmp_path) if r.get("event") == "skipped_file"]
    paths = {str(folders / "mixed" / "zz_text.jpg"), str(folders / "mixed" / "zz_empty.png")}
    for kind in ("train", "validation"):
        mine = [r for r in skipped if r["pass"] == kind]
        assert {r["path"] for r in mine} == paths and len(mine) == 2, mine
        assert all(r["reason"] and "\n" not in r["reason"] for r in mine)


# -- 5. a full disk during a checkpoint ----------------------------------------------------------------
@pytest.mark.parametrize("target", ["trainer_state.pt", "s4.safetensors", ckpt.POINTER])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(mobilenet, tmp_path, monkeypatch, target):
    out = tmp_path / "run"
    trainer = _trainer(mobilenet, out, val=False, steps=3)
    replace = os.replace

    def full(src, dst, *args, **kwargs):
        if trainer.step == 2 and Path(dst).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ModinvError, match=r"the disk is full") as err:
        trainer.fit(progress=False)
    monkeypatch.undo()
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [ckpt.POINTER, "ckpt-00000001"]  # no half checkpoint
    assert not [p for p in out.rglob(".*")]  # no temporary files anywhere
    assert ckpt.load_state(ckpt.latest(root))["step"] == 1
    modinv.InverseChain.load(ckpt.latest(root) / "chain", mobilenet)
    assert not (out / LOCK_FILE).exists()
    resumed = _trainer(mobilenet, out, val=False, steps=3)
    resumed.fit(resume=True, progress=False)
    assert resumed.step == 3 and torch.isfinite(torch.cat([p.flatten() for p in resumed.chain.parameters()])).all()


def _safetensors_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


def _torch_save_full(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
@pytest.mark.parametrize("when", ["checkpoint", "best"])
def test_a_full_disk_reported_by_the_writers_is_one_sentence(mobilenet, tmp_path, monkeypatch, writer, when):
    """Was a SafetensorError / inline_container RuntimeError traceback: the writers do not raise OSError."""
    import safetensors.torch

    out = tmp_path / "run"
    trainer = _trainer(mobilenet, out, val=False, steps=3)
    real = safetensors.torch.save_file if writer == "safetensors" else torch.save
    fake = _safetensors_full if writer == "safetensors" else _torch_save_full

    def failing(*args, **kwargs):
        in_best = any("best" in Path(str(a)).parts for a in args if isinstance(a, (str, Path)))
        if in_best if when == "best" else (trainer.step == 2 and not in_best):
            return fake(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch if writer == "safetensors" else torch, "save_file" if writer == "safetensors"
                        else "save", failing)
    if when == "best" and writer == "torch.save":
        pytest.skip("best/ holds no torch.save file")
    with pytest.raises(ModinvError) as err:
        trainer.fit(progress=False)
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and str(out) in message
    assert "the disk is full" in message or "cannot write" in message
    assert not (out / LOCK_FILE).exists() and not [p for p in out.rglob(".*")]
    latest = ckpt.latest(out / "checkpoints")
    assert ckpt.load_state(latest)["step"] == (1 if when == "checkpoint" else 3)  # the previous one / the final one
    modinv.InverseChain.load(latest / "chain", mobilenet)
