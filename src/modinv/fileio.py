"""Writing files so that nothing is ever half-written, and reading back what modinv wrote.

Every file modinv produces (JSON, JSON-lines records, PNG figures, safetensors weights, reports,
trainer state) goes through :func:`atomic_write`: the content is written to a temporary file in the
target's folder, flushed, given the mode the user's umask gives new files (as ``open`` would), and
renamed over the target. A crash, a full disk or a kill leaves the
previous version intact and no temporary file behind. Errors of the operating system (no space,
no permission, read-only disk) become one :class:`~modinv.errors.ModinvError` sentence naming the
path. This module is the bottom layer: it imports nothing else of modinv but the errors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modinv.errors import ModinvError, brief

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def os_error_sentence(exc: OSError, path: str | os.PathLike, action: str = "write") -> str:
    """One sentence for an ``OSError`` met while ``action``-ing ``path``."""
    where = repr(str(path))
    if exc.errno in _DISK_FULL:
        return f"cannot {action} {where}: the disk is full (free some space or choose another folder)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot {action} {where}: permission denied"
    if exc.errno == errno.EROFS:
        return f"cannot {action} {where}: the file system is read-only"
    return f"cannot {action} {where} ({exc.strerror or type(exc).__name__})"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to produce the file, then rename ``tmp`` over ``path``.

    ``write`` receives a path in the same folder (so the rename is atomic) and must create the
    file there; whatever it raises propagates after the temporary file is removed (an ``OSError``
    as a one-sentence :class:`ModinvError` naming ``path``). Returns ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb+") as f:  # flush the data before the rename publishes it
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from colleagues
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path)) from None
    except Exception as exc:
        sentence = writer_error_sentence(exc, path)
        if sentence is None:
            raise
        raise ModinvError(sentence) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


_DISK_FULL_WORDS = ("no space left", "storagefull", "os error 28", "code: 28", "disk quota")


def writer_error_sentence(exc: Exception, path: str | os.PathLike) -> str | None:
    """One sentence for a failed write reported by a library's own writer rather than as an
    ``OSError`` (safetensors' ``SafetensorError``, ``torch.save``'s "file write failed"
    ``RuntimeError``); None for an exception that is no write failure."""
    text = str(exc).lower()
    if any(words in text for words in _DISK_FULL_WORDS):
        return os_error_sentence(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    if type(exc).__name__ == "SafetensorError" or "file write failed" in text or "inline_container" in text:
        return f"cannot write {str(path)!r} ({brief(exc)})"
    return None


def current_umask() -> int:
    """The process's file-mode creation mask (from /proc where it can be read without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finite_or_null(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON null), recursively; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def to_json(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (non-finite numbers as null, never bare NaN)."""
    return json.dumps(finite_or_null(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (the one JSON writer of modinv)."""
    return atomic_write_text(path, to_json(obj) + "\n")


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one strict-JSON record as one line, written with a single ``write`` call so that a
    crash leaves either the whole line or none of it."""
    line = to_json(record, indent=None) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path)) from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON in ``path``, or one sentence saying why it cannot be read (``what`` names it)."""
    path = Path(path)
    if not path.is_file():
        raise ModinvError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path, "read")) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModinvError(f"cannot read {what} {str(path)!r} ({type(exc).__name__}: {exc})") from None
    except RecursionError:  # a hostile file of arrays in arrays, 100,000 deep
        raise ModinvError(f"cannot read {what} {str(path)!r}: its JSON is nested too deeply") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
