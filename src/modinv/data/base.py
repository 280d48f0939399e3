"""The base of every image source: :class:`ImageSource` (items, skipping, seeded augmentation),
:class:`FolderSource` (every image under a folder) and the path helpers the sources share.

A file that cannot be used (not an image, truncated, missing, too large) gives ``None`` instead of
an item, with a :class:`DataWarning`; :meth:`ImageSource.load` gives an :class:`Unusable` (name,
reason) instead, without a warning, which is what :func:`modinv.data.make_loader` uses: its
batches carry the skipped files, and each pass over the data ends with one summary line.
"""

from __future__ import annotations

import operator
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from modinv.data.decode import IMAGE_EXTENSIONS, is_image_file, read_image
from modinv.data.transforms import augment_image, resize_image
from modinv.errors import ModinvError, brief
from modinv.fileio import os_error_sentence


class DataWarning(UserWarning):
    """An item of an image source could not be used and was skipped."""


class Unusable(NamedTuple):
    """An item that could not be used: its name (file path or sample name) and why, in one line."""

    name: str
    reason: str


class ImageSource(Dataset):
    """A sequence of images (and, for COCO, their annotations) at a fixed size.

    ``source[i]`` is a dict with at least ``"image"`` (float32 3×H×W in [0, 1]), ``"index"`` (i)
    and ``"name"`` (file path or sample name), or ``None`` when item i cannot be read (the reason
    goes to ``source.skipped`` in the process that read it, and to a :class:`DataWarning`);
    ``source.load(i)`` is the same but gives an :class:`Unusable` instead of ``None``, unwarned.
    ``names[i]`` is item i's name without reading it.

    With ``augment=True`` (image-only sources) each item is a random crop (half to all of the
    area, aspect 3/4-4/3) resized to ``size`` and flipped horizontally half of the time, drawn from
    a generator seeded by ``(seed, epoch, index)``: the same for the same seed, epoch and index in
    any process or worker, different for another seed; :meth:`set_epoch` changes it per epoch.
    """

    kind: str = "images"
    supports_augment: bool = True

    def __init__(self, size: tuple[int, int], augment: bool = False, seed: int = 0, spec: str = "") -> None:
        self.size = check_size(size)
        if augment and not self.supports_augment:
            raise ModinvError(
                f"augment=True is not supported for {self.kind} sources (a random crop would have to move "
                "their boxes and masks); use it with samples, folder or imagenet sources"
            )
        self.augment = bool(augment)
        if operator.index(seed) < 0:
            raise ModinvError(f"the seed of an image source must be 0 or more, got {seed}")
        self.seed = int(seed)
        self.epoch = 0
        self.spec = spec
        self.names: list[str] = []
        self.skipped: dict[str, str] = {}

    # -- subclass hooks -------------------------------------------------------------------------
    def _read(self, index: int) -> np.ndarray:
        """Item ``index``'s image as float32 h×w×3 RGB in [0, 1]; raise when it cannot be read."""
        raise NotImplementedError

    def _extras(self, index: int) -> dict[str, Any]:
        """Keys besides image/index/name (targets); raise when the item cannot be used."""
        return {}

    # -- Dataset --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.load(index)
        if isinstance(item, Unusable):
            warnings.warn(f"skipped unusable image {item.name} ({item.reason})", DataWarning, stacklevel=2)
            return None
        return item

    def load(self, index: int) -> dict[str, Any] | Unusable:
        """Item ``index``, or an :class:`Unusable` when its file cannot be used (also recorded in
        ``skipped``); no warning: :func:`~modinv.data.make_loader` counts and summarises them."""
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a source of {len(self)} images")
        name = self.names[index]
        try:
            image = torch.from_numpy(self._read(index)).permute(2, 0, 1)
            if self.augment:
                image = augment_image(image, self.size, self.rng(index))
            else:
                image = resize_image(image, self.size)
            item = {"image": image.contiguous(), "index": index, "name": name}
            item.update(self._extras(index))
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop a run; it is reported
            self.skipped[name] = brief(exc)
            return Unusable(name, self.skipped[name])
        return item

    def set_epoch(self, epoch: int) -> None:
        """Use a new augmentation draw per epoch (call before iterating; workers get the value
        because :func:`make_loader` does not keep workers alive between epochs)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of item ``index`` for the current seed and epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __repr__(self) -> str:
        extra = ", augment=True" if self.augment else ""
        return f"{type(self).__name__}({self.spec!r}, {len(self)} images, size={self.size}{extra})"


class FolderSource(ImageSource):
    """Every image file under a folder (recursively; hidden files and folders excluded), in sorted
    path order, or a single image file. ``names`` are the file paths."""

    kind = "folder"

    def __init__(self, root: str | Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.root = existing_path(root, "image folder")
        if self.root.is_file():
            self.paths = [self.root]
        else:
            self.paths = list_images(self.root)
            if not self.paths:
                raise ModinvError(
                    f"no images found under {self.root} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
                )
        self.names = [str(p) for p in self.paths]

    def _read(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])


# -- helpers --------------------------------------------------------------------------------------
def check_size(size: Any) -> tuple[int, int]:
    """(H, W) as two positive ints (an int n means (n, n))."""
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise ModinvError(f"image size must be (height, width) in pixels, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ModinvError(f"image size must be positive, got {(h, w)}")
    return int(h), int(w)


def existing_path(path: str | Path, what: str) -> Path:
    """``path`` (with ``~`` expanded), or one sentence naming ``what`` when it does not exist or
    cannot be looked at (no permission on a folder above it)."""
    p = Path(path).expanduser()
    if not path_exists(p, what):
        raise ModinvError(f"{what} {p} does not exist")
    return p


def path_exists(path: Path, what: str = "file") -> bool:
    """Whether ``path`` exists; one sentence naming ``what`` when the system cannot tell (permission
    denied on a folder above it, I/O error) instead of a traceback."""
    try:
        return path.exists()
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path, f"read {what}")) from None



def split_root(rest: str) -> tuple[str, str | None]:
    """``ROOT[:split]`` -> (ROOT, split or None); a path that exists as written is all ROOT."""
    try:
        whole = Path(rest).expanduser().exists()
    except OSError:  # cannot look: the source reports it when it opens the path
        whole = False
    if whole or ":" not in rest:
        return rest, None

    root, split = rest.rsplit(":", 1)
    if not split or "/" in split or os.sep in split:
        return rest, None
    return root, split


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, following links once, hidden entries skipped), sorted.
    A folder that cannot be listed (no permission, I/O error) is an error naming it, not a silent gap."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_unreadable_folder):

        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f))
    return sorted(found)


def _unreadable_folder(exc: OSError) -> None:
    """``os.walk``'s error hook: a folder that cannot be listed stops the scan with one sentence."""
    raise ModinvError(os_error_sentence(exc, exc.filename or "?", "read folder"))


def subfolders(root: Path) -> list[str]:
    """Names of the non-hidden folders directly in ``root``, sorted; one sentence when it cannot be listed."""
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, exc.filename or root, "read folder")) from None
