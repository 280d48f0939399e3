"""Crash-safe checkpoints: each one a complete folder, published by atomically rewriting a pointer.

A run killed at any moment leaves either the previous checkpoint or the new one, never a mix:
the folder ``ckpt-<step>/`` is written completely first, then the file ``LATEST`` (written to a
temporary file and renamed, :mod:`modinv.fileio`) is switched to it, then older folders are removed.
The trainer state's SHA-256 is written beside it (:data:`CHECKSUM_FILE`) and checked before a resume
reads it; a checkpoint of an older modinv without one resumes with a warning.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from modinv.errors import ModinvError
from modinv.fileio import atomic_write, atomic_write_text, read_json, sha256_file, write_json

POINTER = "LATEST"
STATE_FILE = "trainer_state.pt"
CHECKSUM_FILE = "checksums.json"  # {"trainer_state.pt": sha256 hex}, beside the state


def new_checkpoint_dir(root: Path, step: int) -> Path:
    """An empty folder for the checkpoint of ``step`` (replacing a half-written one)."""
    path = root / f"ckpt-{step:08d}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Trainer state (optimisers, step, RNG) next to the components; tensors and plain types only."""
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
    write_json(folder / CHECKSUM_FILE, {STATE_FILE: sha256_file(folder / STATE_FILE)})


def write_checkpoint(root: Path, step: int, save_chain: Callable[[Path], Any], state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``step`` under ``root`` (``save_chain(folder / "chain")``, then the
    trainer state) and publish it. Should anything fail (a full disk, Ctrl-C), the half-written
    folder is removed and the previous checkpoint stays the one a resume starts from."""
    folder = new_checkpoint_dir(root, step)
    try:
        save_chain(folder / "chain")
        save_state(folder, state)
        publish(root, folder)
    except BaseException:
        discard(root, folder)
        raise
    return folder


def discard(root: Path, folder: Path) -> None:
    """Remove a checkpoint folder whose writing failed, unless ``LATEST`` already names it."""
    try:
        named = (root / POINTER).read_text().strip()
    except OSError:
        named = None
    if named != folder.name:
        shutil.rmtree(folder, ignore_errors=True)


def publish(root: Path, folder: Path) -> None:
    """Make ``folder`` the checkpoint a resume starts from, then drop the older ones."""
    atomic_write_text(root / POINTER, folder.name + "\n")
    for old in root.glob("ckpt-*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    """The last published checkpoint folder under ``root``, or None."""
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / STATE_FILE).is_file():
        raise ModinvError(f"checkpoint {str(folder)!r} named by {str(pointer)!r} is incomplete; cannot resume")
    return folder


def verify_state(folder: Path) -> None:
    """Refuse (one sentence) a trainer state whose bytes differ from the checksum written with it;
    warn once for a checkpoint written before checksums were (no :data:`CHECKSUM_FILE`)."""
    path, sums = folder / STATE_FILE, folder / CHECKSUM_FILE
    if not sums.exists():
        warnings.warn(f"checkpoint {str(folder)!r} has no {CHECKSUM_FILE} (written by an older modinv): its "
                      f"{STATE_FILE} is resumed from without being verified", stacklevel=3)
        return
    recorded = read_json(sums, "checkpoint checksums")
    expected = recorded.get(STATE_FILE) if isinstance(recorded, dict) else None
    if not isinstance(expected, str):
        raise ModinvError(f"{str(sums)!r} gives no checksum of {STATE_FILE}; the checkpoint cannot be verified, "
                          "so it is not resumed from")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ModinvError(f"cannot read trainer state {str(path)!r} ({type(exc).__name__})") from None
    if actual != expected.lower():
        raise ModinvError(f"{str(path)!r} does not match its checksum: it is truncated, corrupt or was replaced")


def load_state(folder: Path) -> dict[str, Any]:
    """Trainer state written by :func:`save_state`, verified against its checksum first
    (:func:`verify_state`), then read with ``weights_only=True`` (no pickled code runs)."""
    verify_state(folder)
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModinvError(f"cannot read trainer state in {str(folder)!r} ({type(exc).__name__})") from None
