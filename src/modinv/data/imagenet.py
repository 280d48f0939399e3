"""ImageNet: class-per-folder image sources, the ImageNet-1k synset ids and class names, and the
choice of label map (standard ImageNet-1k indices or sorted folder positions) for a folder."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from modinv.data.base import FolderSource, ImageSource, existing_path, list_images, split_root, subfolders

from modinv.errors import ModinvError

LABEL_MAPS = ("auto", "sorted", "imagenet")


class ImageNetSource(FolderSource):
    """Class-per-folder images (ImageNet's layout): item ``"label"`` is the class index.

    ``ROOT`` is the folder of class folders, or a folder holding ``val/`` (or ``split/``) with them.
    ``label_map="sorted"``: labels are the positions of the folder names in sorted order (torchvision's
    ImageFolder rule; equal to the standard ImageNet-1k indices when all 1000 synset folders are
    there). ``label_map="imagenet"``: folder names must be ImageNet-1k synset ids (``n01440764``...)
    and labels are their standard indices, also for a subset of the classes.
    """

    kind = "imagenet"

    def __init__(self, root: str | Path, split: str | None = None, label_map: str = "sorted", **kw: Any) -> None:
        ImageSource.__init__(self, **kw)
        root = existing_path(root, "ImageNet folder")
        if split is not None:
            root = existing_path(root / split, f"ImageNet {split!r} folder")
        elif (root / "val").is_dir():
            root = root / "val"
        self.root = root
        self.classes = subfolders(root)
        if not self.classes:
            raise ModinvError(
                f"{root} has no class folders; ImageNet images must be arranged one folder per class "
                "(labels are the sorted folder names)"
            )
        self.class_to_idx = self._label_map(label_map)
        self.paths, self.labels = [], []
        for name in self.classes:
            for path in list_images(root / name):
                self.paths.append(path)
                self.labels.append(self.class_to_idx[name])
        if not self.paths:
            raise ModinvError(f"no images found in the class folders of {root}")
        self.names = [str(p) for p in self.paths]

    def _label_map(self, label_map: str) -> dict[str, int]:
        if label_map == "sorted":
            return {name: i for i, name in enumerate(self.classes)}
        if label_map == "imagenet":
            index = {s: i for i, s in enumerate(_synsets())}
            unknown = [c for c in self.classes if c not in index]
            if unknown:
                raise ModinvError(
                    f"folder {unknown[0]!r} in {self.root} is not an ImageNet-1k synset id; "
                    "use label_map='sorted' for other class folders"
                )
            return {c: index[c] for c in self.classes}
        raise ModinvError(f"unknown label_map {label_map!r}; valid: 'sorted', 'imagenet'")

    def _extras(self, index: int) -> dict[str, Any]:
        return {"label": self.labels[index]}


@functools.lru_cache(maxsize=1)
def _synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k synset ids in class-index order (from timm's bundled list)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")  # read the file without importing timm (slow)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location, "data", "_info", "imagenet_synsets.txt")
        if path.is_file():
            return tuple(path.read_text().split())
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids (``n01440764`` ...) in class-index order."""
    return list(_synsets())


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index order ("tench", "goldfish", ...): torchvision's
    short names, the list every one of its ImageNet weights' metadata shares (no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(str(name) for name in _IMAGENET_CATEGORIES)


def resolve_label_map(spec: str, label_map: str = "auto") -> str:
    """The label map of the ``imagenet:ROOT[:split]`` source ``spec``: ``label_map`` itself unless it
    is ``"auto"``, which becomes ``"imagenet"`` when every class folder is an ImageNet-1k synset id
    (so a subset of the classes keeps the standard indices), ``"sorted"`` when none is; a folder
    that mixes synset folders with others is refused, naming the others (sorted positions would
    silently give every class another label)."""
    if label_map != "auto":
        return label_map
    root, split = split_root(spec.strip().partition(":")[2])
    folder = Path(root).expanduser()
    if split is not None:
        folder = folder / split
    elif (folder / "val").is_dir():
        folder = folder / "val"
    if not folder.is_dir():
        return "sorted"  # the source reports the missing folder itself
    classes = subfolders(folder)
    known = set(_synsets())
    others = [c for c in classes if c not in known]
    if others and len(others) < len(classes):
        shown = ", ".join(repr(c) for c in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ModinvError(
            f"{folder} mixes ImageNet-1k synset folders with {len(others)} folder(s) that are not synset ids "
            f"({shown}); move them away to keep the standard class indices, or choose the label map 'sorted' "
            "(labels by sorted folder position)"
        )
    return "imagenet" if classes and not others else "sorted"
