"""Bad input through the `modinv` command: each case exits with status 2 and prints one sentence,
``modinv <command>: error: ...``, on stderr, never a traceback. Unusable images inside a data set
are skipped and counted instead. Untrusted files (weights, components, trainer states) are never
unpickled: a pickle in their place is refused without running it, and a static check keeps
``pickle``, ``eval``/``exec`` and unguarded ``torch.load`` out of the source.

``MODINV_SHOW_ERRORS=1 pytest -s tests/cli/test_bad_input.py`` prints every message.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modinv
import modinv.cli.common as cli_common
from modinv.cli import main
from modinv.data.synthetic import make_tiny_coco
from modinv.errors import ModinvError
from modinv.fileio import sha256_file
from modinv.inverse.chain import InverseChain
from modinv.training import checkpoint as ckpt

SRC = Path(modinv.__file__).parent
VIT = ["--model", "vit-b16", "--weights", "random", "--device", "cpu", "--input-size", "32", "32"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- helpers and fixtures ---------------------------------------------------------------------------------

def fails(argv: list[str], capsys) -> str:
    """Run the CLI, check status 2 and a one-line, traceback-free error; return the message."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"modinv {argv[0]}: error: "
    assert lines[0].startswith(prefix), err
    message = lines[0][len(prefix):]
    assert message and "\x1b" not in message
    if os.environ.get("MODINV_SHOW_ERRORS"):
        print(f"\n  {' '.join(argv[:1])}: {lines[0]}", file=sys.__stdout__)
    return message


class Payload:
    """Unpickling this object creates a file: proof that the pickle ran, if it ever does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def write_malicious_pickle(path: Path, marker: Path) -> None:
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_component_json(chain_dir: Path, stage: str, meta: dict) -> None:
    """Edit ``<stage>.json`` as an attacker would: its checksum in the manifest forged to match."""
    (chain_dir / f"{stage}.json").write_text(json.dumps(meta))
    manifest = json.loads((chain_dir / "manifest.json").read_text())
    manifest["components"][stage]["config_sha256"] = sha256(chain_dir / f"{stage}.json")
    (chain_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module", autouse=True)
def _reuse_models(model_cache):
    """Every command of this module builds its model through the root conftest's ``model_cache``:
    one frozen random ViT-B/16 serves all the cases instead of one per command."""
    yield model_cache


@pytest.fixture(scope="module")
def vit(_reuse_models):
    from modinv.cli import build_parser

    return cli_common.model_from_args(build_parser().parse_args(["info", *VIT]))


@pytest.fixture(scope="module")
def chain_dir(vit, tmp_path_factory) -> Path:
    """A saved inverse chain for ViT-B/16 at 32×32 (``arch="auto"``: small and quick to load)."""
    return InverseChain.build(vit, arch="auto", seed=0).save(tmp_path_factory.mktemp("chain") / "vit32")


@pytest.fixture
def chain_copy(chain_dir, tmp_path) -> Path:
    return Path(shutil.copytree(chain_dir, tmp_path / "chain"))


@pytest.fixture(scope="module")
def messy_folder(odd_folder, tmp_path_factory) -> Path:
    """The root conftest's ``odd_folder`` (5 odd but usable files, 2 unusable) plus three photos, a
    nested copy of an odd file, a one-pixel image (usable) and an empty file (unusable)."""
    root = Path(shutil.copytree(odd_folder, tmp_path_factory.mktemp("messy") / "images"))
    photo = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    for i in range(3):
        Image.fromarray(np.roll(photo, 7 * i, axis=1)).save(root / f"photo{i}.png")
    (root / "nested").mkdir()
    shutil.copy(root / "cmyk.jpg", root / "nested" / "cmyk.jpg")
    Image.new("RGB", (1, 1), (0, 0, 255)).save(root / "one-pixel.bmp")
    (root / "empty.png").write_bytes(b"")
    return root


UNUSABLE_IN_MESSY_FOLDER = 3
USABLE_IN_MESSY_FOLDER = 10


# -- names ------------------------------------------------------------------------------------------------

def test_unknown_model_lists_the_valid_ones(capsys):
    message = fails(["info", "--model", "resnet-9000", "--weights", "random"], capsys)
    assert message.startswith("unknown model 'resnet-9000'; valid models: ")
    for name in modinv.models.registry.available_models():
        assert name in message


@pytest.mark.parametrize("flag", ["--stages", "--classic"])
def test_unknown_stage_in_train_lists_the_valid_ones(flag, tmp_path, capsys, vit):
    argv = ["train", *VIT, "--arch", "auto", "--data", "samples", "--steps", "1", "--out", str(tmp_path / "run")]
    message = fails([*argv, flag, "nope"] if flag == "--classic" else [*argv, flag, "bb", "nope"], capsys)
    assert "nope" in message and "bb, enc" in message


# -- data -------------------------------------------------------------------------------------------------

def evaluate(chain_dir: Path, data: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["evaluate", *VIT, "--inverse", str(chain_dir), "--data", data, "--out", str(tmp_path / "e.json"), *extra]


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("folder:{missing}", "image folder {missing} does not exist"),
        ("coco:{missing}", "COCO folder {missing} does not exist"),
        ("imagenet:{missing}", "ImageNet folder {missing} does not exist"),
        ("{missing}", "unknown image source '{missing}'; valid sources: samples"),
    ],
)
def test_data_path_that_does_not_exist(spec, expected, chain_dir, tmp_path, capsys):
    missing = str(tmp_path / "no" / "such")
    message = fails(evaluate(chain_dir, spec.format(missing=missing), tmp_path), capsys)
    assert expected.format(missing=missing) in message


def test_folder_without_images(chain_dir, tmp_path, capsys):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("no pictures here")
    (folder / ".hidden.png").write_bytes(b"")
    message = fails(evaluate(chain_dir, f"folder:{folder}", tmp_path), capsys)
    assert message.startswith(f"no images found under {folder} (searched recursively for .jpg")


def test_coco_root_without_annotation_file(chain_dir, tmp_path, capsys):
    root = make_tiny_coco(tmp_path / "coco", n_images=1)
    (root / "annotations" / "instances_val2017.json").unlink()
    message = fails(evaluate(chain_dir, f"coco:{root}", tmp_path), capsys)
    assert message == (f"COCO annotation file {root}/annotations/instances_val2017.json not found "
                       "(expected ROOT/annotations/instances_val2017.json)")
    message = fails(evaluate(chain_dir, f"coco:{root}:train2017", tmp_path), capsys)
    assert "instances_train2017.json not found" in message


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"images": [', "is not valid JSON (Expecting value at line 1)"),
        ("[1, 2, 3]", "is malformed: its top level is not an object"),
        ('{"images": [], "categories": []}', "is malformed: it has no 'annotations' list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}',
         "is malformed: an entry of 'images' lacks id, file_name, height or width"),
        ('{"images": [], "annotations": [{"image_id": 1}], "categories": []}',
         "is malformed: an entry of 'annotations' lacks image_id, bbox or category_id"),
        (b"\xff\xfe\x00garbage", "cannot read COCO annotation file"),
    ],
)
def test_malformed_coco_annotation_file(content, expected, chain_dir, tmp_path, capsys):
    root = make_tiny_coco(tmp_path / "coco", n_images=1)
    annotations = root / "annotations" / "instances_val2017.json"
    annotations.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = fails(evaluate(chain_dir, f"coco:{root}", tmp_path), capsys)
    assert str(annotations) in message and expected in message


def test_unusable_images_are_skipped_and_counted_by_evaluate(chain_dir, messy_folder, tmp_path, capsys):
    out = tmp_path / "e.json"
    capsys.readouterr()
    assert main(evaluate(chain_dir, f"folder:{messy_folder}", tmp_path, "--batch", "4")) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"skipped {UNUSABLE_IN_MESSY_FOLDER} unusable image file(s)" in captured.out
    result = json.loads(out.read_text())
    assert result["n_images"] == USABLE_IN_MESSY_FOLDER
    assert result["skipped"]["count"] == UNUSABLE_IN_MESSY_FOLDER
    assert sorted(Path(p).name for p in result["skipped"]["files"]) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all("\n" not in reason for reason in result["skipped"]["files"].values())
    for r in result["stages"].values():
        assert r["n"] == USABLE_IN_MESSY_FOLDER and np.isfinite(r["mse"])


def test_unusable_images_never_stop_training(messy_folder, tmp_path, capsys):
    run = tmp_path / "run"
    # one batch holds every training file (one of the 13 is held out for validation, also read)
    argv = ["train", *VIT, "--arch", "auto", "--data", f"folder:{messy_folder}", "--steps", "1", "--batch", "13",
            "--stages", "bb", "--out", str(run), "--no-progress", "--amp", "off"]
    with pytest.warns(UserWarning, match="skipped unusable image"):
        assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "best" / "manifest.json").is_file()


def test_only_unusable_images(chain_dir, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_text("not an image")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    message = fails(evaluate(chain_dir, f"folder:{folder}", tmp_path), capsys)
    assert message.startswith(f"none of the 2 images of folder:{folder} could be read (e.g. {folder}/a.jpg: ")


def test_unreadable_image_named_on_the_command_line(chain_dir, messy_folder, tmp_path, capsys):
    argv = ["reconstruct", *VIT, "--inverse", str(chain_dir), "--images", str(messy_folder / "photo0.png"),
            str(messy_folder / "truncated.jpg"), "--out", str(tmp_path / "grid.png")]
    message = fails(argv, capsys)
    assert message.startswith(f"cannot read image {messy_folder / 'truncated.jpg'} (OSError: ")
    assert not (tmp_path / "grid.png").exists()

# (``--batch``/``--limit`` and every other option value: tests/cli/test_option_checks.py)


# -- inverse chains (checkpoints) -------------------------------------------------------------------------

def test_chain_of_another_model(tmp_path, capsys):
    mobilenet = modinv.load_model("mobilenet-v2", weights="random", input_size=(64, 64))
    other = InverseChain.build(mobilenet, arch="auto", seed=0).save(tmp_path / "mobilenet")
    message = fails(evaluate(other, "samples", tmp_path), capsys)
    assert message == (f"--model vit-b16 does not match the chain in '{other}', which was made for --model "
                       "mobilenet-v2; leave it out to use the chain's")


def test_chain_of_another_input_size(chain_dir, tmp_path, capsys):
    """A chain trained at 32×32 has other stage shapes than the model at 64×64 (5 vs 17 tokens)."""
    argv = evaluate(chain_dir, "samples", tmp_path)
    argv[argv.index("--input-size") + 1: argv.index("--input-size") + 3] = ["64", "64"]
    message = fails(argv, capsys)
    assert message == (f"--input-size 64 64 does not match the chain in '{chain_dir}', which was made for "
                       "--input-size 32 32; leave it out to use the chain's")


def test_chain_with_an_edited_manifest(chain_copy, tmp_path, capsys):
    manifest = json.loads((chain_copy / "manifest.json").read_text())
    manifest["components"] = {"../../etc/passwd": {}}
    (chain_copy / "manifest.json").write_text(json.dumps(manifest))
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert "is malformed: it lists components for ['../../etc/passwd'], which are not among its stages" in message
    (chain_copy / "manifest.json").write_text("{not json")
    assert "cannot read" in fails(evaluate(chain_copy, "samples", tmp_path), capsys)


def test_component_config_asking_for_a_huge_module_is_refused_before_building(chain_copy, tmp_path, capsys):
    meta = json.loads((chain_copy / "enc.json").read_text())
    meta["config"]["width"] = 2**20  # 2-block transformer of width 2²⁰: terabytes, if it were built
    write_component_json(chain_copy, "enc", meta)
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert message.startswith(f"weights in '{chain_copy / 'enc.safetensors'}' do not fit their config: missing [")


def test_truncated_component_file(chain_copy, tmp_path, capsys):
    weights = chain_copy / "bb.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert message == (f"weights file '{weights}' does not match the checksum in bb.json: "
                       "it is truncated, corrupt or was replaced; save the chain again")
    # the recorded checksum removed: refused (was: skipped, and the reader alone noticed)
    meta = json.loads((chain_copy / "bb.json").read_text())
    del meta["sha256"]
    write_component_json(chain_copy, "bb", meta)
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert message == (f"'{chain_copy / 'bb.json'}' lacks the checksum of its weights ('sha256'): it is truncated, "
                       "corrupt or was replaced; save the chain again")


def test_corrupt_component_file(chain_copy, tmp_path, capsys):
    weights = chain_copy / "enc.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    assert "does not match the checksum" in fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    # random bytes with a matching checksum (as an attacker would write): the reader refuses them
    meta = json.loads((chain_copy / "enc.json").read_text())
    meta["sha256"] = sha256(weights)
    write_component_json(chain_copy, "enc", meta)
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert message.startswith(f"cannot read weights file '{weights}' (corrupt or truncated")


# -- image sizes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "model,size,expected",
    [
        ("detr-r50", ("100", "100"), "DETR-R50 needs an input size (H, W) divisible by 32, got 100×100"),
        ("vit-b16", ("30", "30"), "ViT-B/16 needs an input size made of whole 16-pixel patches, got 30×30"),
        ("vit-b16", ("8", "8"), "ViT-B/16 needs an input size made of whole 16-pixel patches, got 8×8"),
    ],
)
def test_image_size_the_model_cannot_take(model, size, expected, capsys):
    assert fails(["info", "--model", model, "--weights", "random", "--input-size", *size], capsys) == expected


# -- output locations -------------------------------------------------------------------------------------

def _outputs(tmp_path: Path, chain_dir: Path, out: str) -> dict[str, list[str]]:
    return {
        "train": ["train", *VIT, "--data", "samples", "--steps", "1", "--out", out],
        "evaluate": evaluate(chain_dir, "samples", tmp_path)[:-1] + [os.path.join(out, "e.json")],
        "reconstruct": ["reconstruct", *VIT, "--inverse", str(chain_dir), "--images", "chelsea",
                        "--out", os.path.join(out, "grid.png")],
    }


@pytest.mark.parametrize("command", ["train", "evaluate", "reconstruct"])
def test_output_below_a_file(command, chain_dir, tmp_path, capsys):
    """A folder cannot be made inside a regular file: this fails for root too (root ignores
    permission bits, so a chmod-ed folder would not test anything when the suite runs as root)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    out = str(blocker / "sub")
    message = fails(_outputs(tmp_path, chain_dir, out)[command], capsys)
    assert message == f"cannot create output folder '{out}' (Not a directory)"
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(IS_ROOT, reason="root may write into a folder without write permission")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_output_in_a_read_only_folder(command, chain_dir, tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        argv = _outputs(tmp_path, chain_dir, str(read_only / ("run" if command == "train" else "")))[command]
        message = fails(argv, capsys)
    finally:
        read_only.chmod(0o700)
    assert message in (f"cannot create output folder '{read_only / 'run'}': permission denied",
                       f"output folder '{read_only}' is not writable")



def test_output_file_that_is_a_folder_or_of_an_unknown_format(chain_dir, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    argv = evaluate(chain_dir, "samples", tmp_path)[:-1] + [str(folder)]
    assert fails(argv, capsys) == f"output file '{folder}' is an existing folder; give a file name inside it"
    argv = ["reconstruct", *VIT, "--inverse", str(chain_dir), "--images", "chelsea", "--out", str(tmp_path / "g.xyz")]
    assert fails(argv, capsys).startswith(f"cannot write '{tmp_path / 'g.xyz'}': the file name must end in ")


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A folder a training run wrote: its config.json and best/ chain (a copy of none: a marker)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "vit-b16", "train": {"steps": 1}}\n')
    return run


def _keep(path: Path, text: str = "keep me") -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["chain manifest", "chain component json", "run config", "run subfolder",
                                  "photo", "reconstruct over its input", "reconstruct over a link to its input",
                                  "reconstruct into the chain", "analyze into the chain", "train into the chain",
                                  "eval-task over a photo", "params over a photo"])
def test_an_output_never_replaces_an_input_or_a_file_modinv_owns(case, chain_copy, fake_run, tmp_path, capsys):
    """Each of these overwrote a file before: a chain's manifest, a run's config.json, a photo
    with JSON, the image a reconstruction was made from."""
    keep = _keep(tmp_path / "keep.png")
    Image.new("RGB", (8, 8)).save(keep)
    link = tmp_path / "link.png"
    link.symlink_to(keep)
    evaluate_to = evaluate(chain_copy, "samples", tmp_path)[:-1]
    reconstruct = ["reconstruct", *VIT, "--inverse", str(chain_copy), "--images", str(keep), "--out"]
    argv, words = {
        "chain manifest": ([*evaluate_to, str(chain_copy / "manifest.json")], "lies inside the inverse chain"),
        "chain component json": ([*evaluate_to, str(chain_copy / "enc.json")], "lies inside the inverse chain"),
        "run config": ([*evaluate_to, str(fake_run / "config.json")], "lies inside the training run folder"),
        "run subfolder": ([*evaluate_to, str(fake_run / "eval" / "e.json")], "lies inside the training run folder"),
        "photo": ([*evaluate_to, str(keep)], "the file name must end in .json"),
        "reconstruct over its input": ([*reconstruct, str(keep)], "is also an input of this command"),
        "reconstruct over a link to its input": ([*reconstruct, str(link)], "is also an input of this command"),
        "reconstruct into the chain": ([*reconstruct, str(chain_copy / "grid.png")], "lies inside the inverse chain"),
        "analyze into the chain": (["analyze", "stages", *VIT, "--inverse", str(chain_copy), "--data", "samples",
                                    "--out", str(chain_copy)], "lies inside the inverse chain"),
        "train into the chain": (["train", *VIT, "--data", "samples", "--steps", "1", "--out",
                                  str(chain_copy / "run")], "lies inside the inverse chain"),
        "eval-task over a photo": (["eval-task", *VIT, "--data", "samples", "--out", str(keep)],
                                   "the file name must end in .json"),
        "params over a photo": (["params", *VIT, "--out", str(keep)], "the file name must end in .json"),
    }[case]
    before = {p: sha256(p) for p in [keep, *chain_copy.iterdir(), *fake_run.iterdir()] if p.is_file()}
    assert words in fails(argv, capsys)
    assert {p: sha256(p) for p in before} == before
    assert sorted(p.name for p in chain_copy.iterdir()) == sorted(p.name for p in before if p.parent == chain_copy)
    assert not (fake_run / "eval").exists()


@pytest.mark.slow  # two fresh interpreters importing the whole CLI
@pytest.mark.parametrize("argv", [["info", "--model", "resnet-9000", "--weights", "random"],
                                  ["train", *VIT, "--data", "samples", "--steps", "1", "--out", "{blocker}/sub"]])
def test_errors_from_a_real_process(argv, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = [a.format(blocker=blocker) for a in argv]
    done = subprocess.run([sys.executable, "-m", "modinv", *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(f"modinv {argv[0]}: error: ")


# -- full disks, read-only mounts, no permission (simulated: the suite may run as root) ----------------------

DISK_ERRORS = {errno.ENOSPC: "the disk is full (free some space or choose another folder)",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}


@pytest.mark.parametrize("code", sorted(DISK_ERRORS), ids=errno.errorcode.get)
def test_output_folder_that_cannot_be_created(code, chain_dir, tmp_path, capsys, monkeypatch):
    def mkdir(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    message = fails(evaluate(chain_dir, "samples", tmp_path)[:-1] + [str(tmp_path / "new" / "e.json")], capsys)
    assert message == f"cannot create output folder '{tmp_path / 'new'}': {DISK_ERRORS[code]}"


def test_output_folder_on_a_full_disk_is_refused_before_any_work(chain_dir, tmp_path, capsys, monkeypatch):
    """Before, a full disk was only found when the results were written, after all the work."""
    usage = shutil.disk_usage
    monkeypatch.setattr(cli_common.shutil, "disk_usage", lambda path: usage(path)._replace(free=0))
    monkeypatch.setattr(InverseChain, "load", lambda *a, **k: pytest.fail("work started on a full disk"))
    for argv, folder in [(evaluate(chain_dir, "samples", tmp_path), tmp_path),
                         (["analyze", "stages", *VIT, "--inverse", str(chain_dir), "--data", "samples",
                           "--out", str(tmp_path / "an")], tmp_path / "an")]:
        assert fails(argv, capsys) == f"cannot write into output folder '{folder}': {DISK_ERRORS[errno.ENOSPC]}"


def test_output_folder_on_a_read_only_mount(chain_dir, tmp_path, capsys, monkeypatch):
    """Permission bits say nothing about a read-only mount: a file is created there to find out."""
    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(cli_common.tempfile, "mkstemp", mkstemp)
    message = fails(evaluate(chain_dir, "samples", tmp_path), capsys)
    assert message == f"cannot write into output folder '{tmp_path}': {DISK_ERRORS[errno.EROFS]}"


def fails_at_the_end(argv: list[str], capsys) -> str:
    """:func:`fails` for a command that worked before failing: progress lines may precede its one
    error line, which must be the last."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"modinv {argv[0]}: error: "), err
    return last[len(f"modinv {argv[0]}: error: "):]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_no_space(self, data, *args, **kwargs):
    with open(self, "w") as f:
        f.write(data[: len(data) // 2])
    _no_space()


@pytest.mark.parametrize("where", ["rename", "write"])
def test_a_full_disk_while_writing_keeps_the_previous_results(where, chain_dir, tmp_path, capsys, monkeypatch):
    """The JSON is written to a temporary file and renamed over the old one: a failure at either
    step leaves the previous ev.json whole and no temporary file behind."""
    out = tmp_path / "results" / "ev.json"
    out.parent.mkdir()
    out.write_text('{"previous": "result"}\n')
    if where == "rename":
        monkeypatch.setattr(os, "replace", _no_space)
    else:
        monkeypatch.setattr(Path, "write_text", _half_then_no_space)
    message = fails_at_the_end(evaluate(chain_dir, "samples", tmp_path)[:-1] + [str(out)], capsys)
    assert message == f"cannot write '{out}': {DISK_ERRORS[errno.ENOSPC]}"
    assert json.loads(out.read_text()) == {"previous": "result"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["ev.json"]


def test_a_full_disk_while_saving_a_figure_keeps_the_previous_one(chain_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out)
    before = out.read_bytes()
    monkeypatch.setattr(os, "replace", _no_space)
    argv = ["reconstruct", *VIT, "--inverse", str(chain_dir), "--images", "chelsea", "--out", str(out)]
    assert fails_at_the_end(argv, capsys) == f"cannot write '{out}': {DISK_ERRORS[errno.ENOSPC]}"
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_a_data_folder_that_cannot_be_listed(chain_dir, messy_folder, tmp_path, capsys, monkeypatch):
    """A subfolder without read permission used to be skipped silently (fewer images, exit 0)."""
    blocked = messy_folder / "nested"
    scandir = os.scandir

    def guarded(path="."):
        if Path(path) == blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    message = fails(evaluate(chain_dir, f"folder:{messy_folder}", tmp_path), capsys)
    assert message == f"cannot read folder '{blocked}': permission denied"


# -- untrusted files --------------------------------------------------------------------------------------

def test_weights_file_that_is_a_pickle_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    evil = tmp_path / "weights.pt"
    write_malicious_pickle(evil, marker)
    message = fails(["info", "--model", "vit-b16", "--weights", str(evil), "--input-size", "32", "32"], capsys)
    assert message.startswith(f"cannot read weights file '{evil}' (it holds pickled Python objects besides tensors, "
                              "which modinv refuses to load because unpickling them could run code")
    assert not marker.exists()
    junk = tmp_path / "weights.safetensors"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    message = fails(["info", "--model", "vit-b16", "--weights", str(junk), "--input-size", "32", "32"], capsys)
    assert message.startswith(f"cannot read weights file '{junk}' (SafetensorError: ")


def test_component_replaced_by_a_pickle_is_refused_without_running_it(chain_copy, tmp_path, capsys, vit):
    marker = tmp_path / "pickle-ran"
    weights = chain_copy / "bb.safetensors"
    write_malicious_pickle(weights, marker)
    assert "does not match the checksum" in fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    meta = json.loads((chain_copy / "bb.json").read_text())
    meta["sha256"] = sha256(weights)  # a consistent forgery: the checksum cannot catch it, the reader does
    write_component_json(chain_copy, "bb", meta)
    message = fails(evaluate(chain_copy, "samples", tmp_path), capsys)
    assert message.startswith(f"cannot read weights file '{weights}' (corrupt or truncated, or not a safetensors file")
    with pytest.raises(ModinvError, match="not a safetensors file"):
        InverseChain.load(chain_copy, vit)
    assert not marker.exists()


def test_trainer_state_replaced_by_a_pickle_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    run = tmp_path / "run"
    argv = ["train", "--model", "mobilenet-v2", "--weights", "random", "--device", "cpu", "--input-size", "32", "32",
            "--arch", "auto", "--data", "samples", "--batch", "2", "--no-progress", "--out", str(run)]
    assert main([*argv, "--steps", "1"]) == 0  # a real run (a resume needs its config.json)
    folder = ckpt.latest(run / "checkpoints")
    write_malicious_pickle(folder / ckpt.STATE_FILE, marker)
    assert fails([*argv, "--steps", "2", "--resume"], capsys).endswith("does not match its checksum: it is truncated, "
                                                                        "corrupt or was replaced")
    # with the checksum forged to match, weights_only still refuses to run it
    (folder / ckpt.CHECKSUM_FILE).write_text(json.dumps({ckpt.STATE_FILE: sha256_file(folder / ckpt.STATE_FILE)}))
    assert fails([*argv, "--steps", "2", "--resume"], capsys) == f"cannot read trainer state in '{folder}' (UnpicklingError)"
    assert not marker.exists()


# -- a static check of the source -------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
    return None


def unsafe_calls(source: str, where: str = "<source>") -> list[str]:
    """Places in Python ``source`` that could unpickle or evaluate untrusted data."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                         if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                problems.append(f"{where}:{node.lineno} imports from {node.module}")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{where}:{node.lineno} imports torch.load by name (its calls cannot be checked)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if isinstance(node.func, ast.Name) and name in UNSAFE_BUILTINS:
                problems.append(f"{where}:{node.lineno} calls {name}()")
            elif name in ("torch.load", "torch.serialization.load") and _keyword(node, "weights_only") is not True:
                problems.append(f"{where}:{node.lineno} calls {name} without weights_only=True")
            elif name in ("torch.jit.load", "torch.hub.load", "yaml.load", "yaml.unsafe_load"):
                problems.append(f"{where}:{node.lineno} calls {name}")
            elif name.split(".")[0] in ("np", "numpy") and name.endswith(".load") and \
                    _keyword(node, "allow_pickle") not in (None, False):
                problems.append(f"{where}:{node.lineno} calls {name} with allow_pickle")
            elif _keyword(node, "trust_remote_code") not in (None, False):
                problems.append(f"{where}:{node.lineno} passes trust_remote_code to {name}")
    return problems


def test_the_source_check_catches_what_it_should():
    bad = ("import pickle\nfrom dill import loads\nfrom torch import load\neval('1')\nexec('x = 1')\n"
           "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)\n"
           "AutoModel.from_pretrained(p, trust_remote_code=True)\n")
    assert len(unsafe_calls(bad)) == 9
    good = "model.eval()\ntorch.load(f, map_location='cpu', weights_only=True)\nnp.load(f)\ntorch.compile(m)\n"
    assert unsafe_calls(good) == []


def test_source_never_unpickles_or_evaluates_code():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems = [p for path in files for p in unsafe_calls(path.read_text(), str(path.relative_to(SRC.parent)))]
    assert not problems, "\n".join(problems)
    torch_loads = [path for path in files if "torch.load(" in path.read_text()]
    assert torch_loads  # the check above did see the calls it guards (checkpoints, weights files)
