"""The run folder of a training run: never taken over by accident, never written by two processes.

- A new run into a folder that holds anything (other than hidden files and a lock) is refused:
  ``resume`` continues the run there, ``overwrite`` first removes what a previous run wrote
  (:data:`RUN_FILES`: ``best/``, ``checkpoints/``, ``log.jsonl``, ``config.json``, and nothing
  else: a user's own files in the folder stay).
- While a run writes into the folder it holds :data:`LOCK_FILE` (its pid, host and process start
  time), created exclusively (``os.link`` of a complete temporary file, or ``O_EXCL``): a second
  process is refused in one sentence naming the owner. A lock whose process no longer runs on
  this host is stale and taken over, with a warning. The lock is released when the run ends,
  also on an error or Ctrl-C; under ``torchrun`` only the main process takes it.
- ``resume`` with settings that differ from the run's ``config.json`` is refused, listing the
  differences, except for the settings in :data:`CHANGEABLE_ON_RESUME` (how long to train, the
  learning rates, intervals and performance options), which are applied and recorded.
- ``config.json`` carries the SHA-256 of its own settings (:data:`CONFIG_CHECKSUM`, see
  :func:`write_run_config`); a resume refuses one that does not match, and warns once for a run of an
  older modinv that wrote none.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError
from modinv.fileio import atomic_write_text, os_error_sentence, read_json, to_json, write_json

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
CONFIG_CHECKSUM = "sha256"  # entry of config.json: hex SHA-256 of its other entries as compact strict JSON
RUN_FILES = ("best", "checkpoints", "log.jsonl", "config.json")
# Entries of config.json a resume may change: the length of the run, the learning rates (the
# optimisers then run at the new rates), how often to log / validate / checkpoint, and options
# that change speed, not results. ``train.X`` names a field of the TrainConfig.
CHANGEABLE_ON_RESUME = frozenset({
    "train.steps", "train.epochs", "train.max_seconds", "train.lr", "learning_rates", "train.val_every",
    "train.checkpoint_every", "train.log_every", "train.num_workers", "train.compile", "train.channels_last",
    "train.reuse_memory",
    "train.stop_on_interrupt", "train.max_nonfinite", "train.overwrite", "device",
})


# -- what the folder holds ---------------------------------------------------------------------------
def folder_contents(out: Path) -> list[str]:
    """Names of the entries of ``out`` that make it non-empty (not hidden files, not the lock)."""
    try:
        names = sorted(p.name for p in Path(out).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, out, "read run folder")) from None
    return [n for n in names if not n.startswith(".") and n != LOCK_FILE]


def run_config(out: Path) -> dict[str, Any] | None:
    """The ``config.json`` in ``out`` when a modinv run wrote it (a mapping naming the model and
    holding the run's ``train`` settings); None when there is none or it is someone else's file."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = read_json(path, "run config")
    except (ModinvError, RecursionError):
        return None
    if isinstance(config, dict) and isinstance(config.get("model"), str) and isinstance(config.get("train"), dict):
        return config
    return None


def _settings_digest(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(to_json(settings, indent=None).encode("utf-8")).hexdigest()


def write_run_config(out: Path, record: Mapping[str, Any]) -> Path:
    """Write the run's ``config.json`` (atomically) with the checksum of its settings in it, so the
    file and its checksum are replaced together; a resume checks it (:func:`verified_run_config`)."""
    settings = json.loads(to_json(record))  # what reading the file back gives
    settings.pop(CONFIG_CHECKSUM, None)
    return write_json(Path(out) / CONFIG_FILE, {**settings, CONFIG_CHECKSUM: _settings_digest(settings)})


_UNVERIFIED_WARNED: set[str] = set()  # config files already warned about (one warning per file and process)


def verified_run_config(out: Path) -> Any:
    """The JSON of ``out/config.json`` after checking its checksum: a mismatch is refused in one
    sentence; a file without one (written by an older modinv) is read with one warning."""
    path = Path(out) / CONFIG_FILE
    record = read_json(path, "run config")
    if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
        return record  # not a run's config: the callers refuse it
    settings = {k: v for k, v in record.items() if k != CONFIG_CHECKSUM}
    if CONFIG_CHECKSUM not in record:
        if str(path.resolve()) not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(str(path.resolve()))
            warnings.warn(f"{str(path)!r} has no checksum (written by an older modinv): the run is resumed "
                          "without verifying its settings", stacklevel=2)
    elif record[CONFIG_CHECKSUM] != _settings_digest(settings):
        raise ModinvError(f"{str(path)!r} does not match its checksum: it is truncated, corrupt or was replaced")
    return settings


def _run_wrote(path: Path) -> bool:
    """Whether ``path`` (an entry of :data:`RUN_FILES`) is provably a run's: ``best/`` a saved chain
    (or empty), ``checkpoints/`` only checkpoints, ``log.jsonl`` JSON records of steps."""
    from modinv.training import checkpoint as ckpt

    if path.name == "config.json":
        return run_config(path.parent) is not None
    if path.name == "log.jsonl":
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            record = json.loads(first) if first.strip() else {}
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and "step" in record
    if path.is_symlink() or not path.is_dir():
        return False
    names = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    if path.name == "checkpoints":
        return all(n == ckpt.POINTER or n.startswith("ckpt-") for n in names)
    return not names or (path / "manifest.json").is_file() and _is_chain(path)


def _is_chain(path: Path) -> bool:
    from modinv.inverse.storage import read_manifest

    try:
        read_manifest(path)
    except (ModinvError, RecursionError):
        return False
    return True


def check_run_folder(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (one sentence) a new run into a folder that is not empty, unless ``resume`` or
    ``overwrite``; a resume where there is no run, or whose config.json is gone; an overwrite of
    files no run provably wrote. Read-only, so a command can call it before any work."""
    if resume and overwrite:
        raise ModinvError("give --resume (continue the run) or --overwrite (replace it), not both")
    out = Path(out)
    found = folder_contents(out)
    if resume and (out / CONFIG_FILE).is_file():
        verified_run_config(out)  # a changed or corrupt config.json is refused before anything else
    if resume and run_config(out) is None:
        if not [n for n in found if n in RUN_FILES]:
            raise ModinvError(f"there is no run to resume in {str(out)!r} (no config.json, no checkpoint); check "
                              "--out, or start the run without --resume")
        raise ModinvError(f"cannot resume the run in {str(out)!r}: its config.json is missing or is not a run's, "
                          "so the settings cannot be checked against the run's; restore it, or start a new run "
                          "(another --out, or --overwrite)")
    if overwrite:
        foreign = [n for n in RUN_FILES if n in found and not _run_wrote(out / n)]
        if foreign:
            raise ModinvError(f"--overwrite removes only what a run wrote, and {', '.join(foreign)} in {str(out)!r} "
                              "are not a run's files; move them away, or choose another --out")
    if found and not (resume or overwrite):
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ModinvError(
            f"run folder {str(out)!r} is not empty (it holds {shown}); continue the run there with --resume, "
            "replace it with --overwrite (removes only best/, checkpoints/, log.jsonl, config.json), "
            "or choose another --out"
        )


def clear_run(out: Path) -> list[str]:
    """Remove what a previous run wrote into ``out`` (:data:`RUN_FILES`, each only when provably a
    run's; :func:`check_run_folder` refuses the others first); returns the names removed."""
    removed = []
    for name in RUN_FILES:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        if not _run_wrote(path):
            raise ModinvError(f"--overwrite removes only what a run wrote, and {str(path)!r} is not a run's file")
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise ModinvError(os_error_sentence(exc, path, "remove")) from None
        removed.append(name)
    return removed


# -- settings of a resumed run -----------------------------------------------------------------------
def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in record.items() if k != "train"}
    flat.update({f"train.{k}": v for k, v in (record.get("train") or {}).items()})
    return flat


def resume_changes(out: Path, record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings of ``record`` (the config.json a run would write) that differ from the run's
    ``config.json`` in ``out``: ``{name: {"from", "to"}}``, only changeable ones; a difference in any
    other setting is refused in one sentence listing them. Nothing when there is no config.json."""
    if not (out / CONFIG_FILE).is_file():
        return {}
    old, new = _flat(verified_run_config(out)), _flat(json.loads(to_json(record)))
    new.pop(CONFIG_CHECKSUM, None)
    changes = {k: {"from": old[k], "to": new[k]} for k in new if k in old and old[k] != new[k]}
    refused = {k: v for k, v in changes.items() if k not in CHANGEABLE_ON_RESUME}
    if refused:
        listed = "; ".join(f"{k.removeprefix('train.')} {v['from']!r} (run) vs {v['to']!r} (now)"
                           for k, v in refused.items())
        raise ModinvError(
            f"cannot resume the run in {str(out)!r} with other settings than its config.json: {listed}; "
            "resume with the run's settings, or start a new run (another --out, or --overwrite)"
        )
    return changes


# -- the lock ----------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc, in clock ticks since boot), None if unknown:
    with it a lock is stale also when its pid was reused by another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the process named by a lock (of this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    started = owner.get("started")
    return started is None or _process_start(pid) in (None, started)


class RunLock:
    """The lock of a run folder (a context manager; :meth:`acquire` / :meth:`release`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "started": _process_start(pid), "token": self.token}

    def _create(self) -> bool:
        """Create the lock file, complete, if there is none; False when one exists."""
        text = to_json(self._record()) + "\n"
        private = self.folder / f".{LOCK_FILE}.{self.token}"
        try:
            atomic_write_text(private, text)
            try:
                os.link(private, self.path)  # fails if the lock exists: an exclusive, complete creation
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
            # a file system without hard links: create exclusively, then write
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return True
        except OSError as exc:
            raise ModinvError(os_error_sentence(exc, self.path, "create lock file")) from None
        finally:
            private.unlink(missing_ok=True)

    def owner(self) -> dict[str, Any] | None:
        """The record in the lock file; None when there is none; {} when it cannot be read."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> "RunLock":
        """Take the lock, taking over a stale one with a warning; one sentence when the folder is in use."""
        for _ in range(5):
            if self._create():
                self.held = True
                return self
            owner = self.owner()
            if owner is None:  # released meanwhile: try again
                continue
            if not owner:
                raise ModinvError(f"the lock file {str(self.path)!r} cannot be read; delete it if no run is "
                                  f"writing into {str(self.folder)!r}")
            who = f"process {owner.get('pid')} on host {owner.get('host')!r}"
            if owner.get("host") != socket.gethostname() or _alive(owner):
                raise ModinvError(
                    f"run folder {str(self.folder)!r} is in use by {who} (lock file {str(self.path)!r}); wait "
                    "for that run to end, or delete the lock file if it no longer runs"
                )
            warnings.warn(f"taking over the stale lock {str(self.path)!r} of {who}, which no longer runs",
                          RuntimeWarning, stacklevel=3)
            self._remove_stale(owner)
        raise ModinvError(f"could not take the lock {str(self.path)!r}: other processes keep taking it")

    def _remove_stale(self, stale: Mapping[str, Any]) -> None:
        """Move the stale lock aside and delete it; should another process have replaced it in the
        meantime (it judged the same lock stale), put that fresh lock back."""
        aside = self.folder / f".{LOCK_FILE}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ModinvError(os_error_sentence(exc, self.path, "remove stale lock file")) from None
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            moved = {}
        if isinstance(moved, dict) and moved.get("token") != stale.get("token"):
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this object holds it (never another process's lock)."""
        if not self.held:
            return
        self.held = False
        owner = self.owner()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def open_run_folder(out: Path, resume: bool, overwrite: bool, record: Mapping[str, Any], dist: DistContext = SINGLE,
                    device: torch.device | None = None) -> tuple[RunLock | None, dict[str, dict[str, Any]], list[str]]:
    """Lock ``out`` for a run and make it ready: refused when in use, when it holds another run
    and neither ``resume`` nor ``overwrite`` is given, or when a resume changes settings that
    cannot change (``record``: the config.json the run would write). Under ``torchrun`` the main
    process does it and every process learns whether to go on (``device``: where ``dist``
    reduces). Returns ``(lock, changes a resume applies, names removed by overwrite)``; the
    caller releases the lock (None on the other processes)."""
    lock, changes, removed, failure = None, {}, [], None
    if dist.is_main:
        try:
            lock, changes, removed = _open_here(out, resume, overwrite, record)
        except Exception as exc:  # raised below, once every process knows
            failure = exc
    if dist.enabled:
        failed = dist.all_reduce_sum(torch.tensor([float(failure is not None)], device=device))
        if failure is None and float(failed[0]):
            if lock is not None:
                lock.release()
            raise ModinvError(f"the main process refused the run folder {str(out)!r}")
    if failure is not None:
        raise failure
    if removed:
        warnings.warn(f"removed {', '.join(removed)} of the previous run in {str(out)!r} (overwrite)", stacklevel=3)
    return lock, changes, removed


def _open_here(out: Path, resume: bool, overwrite: bool, record: Mapping[str, Any]
               ) -> tuple[RunLock, dict[str, dict[str, Any]], list[str]]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, out, "create output folder")) from None
    lock = RunLock(out).acquire()
    try:
        check_run_folder(out, resume, overwrite)
        changes = resume_changes(out, record) if resume else {}
        removed = clear_run(out) if overwrite else []
    except BaseException:
        lock.release()
        raise
    return lock, changes, removed


def describe_changes(changes: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence on the settings a resume changed (``{name: {"from", "to"}}``)."""
    listed = ", ".join(f"{k.removeprefix('train.')} {v['from']} -> {v['to']}" for k, v in changes.items())
    return f"resumed with changed settings (applied and recorded in config.json): {listed}"
