"""Image sources: the sample photos, image folders, COCO and ImageNet, as torch Datasets.

``open_source(spec, size)`` is the entry point; every source yields dict items whose ``"image"`` is
float32 3×H×W RGB in [0, 1] at exactly ``size`` = (H, W) (aspect ratio ignored, as in the paper's
code). A file that cannot be used (not an image, truncated, missing) gives ``None`` instead of an
item, with a :class:`DataWarning`; :func:`modinv.data.collate` drops such ``None`` and counts them,
so a run over a messy folder never stops half-way, with or without DataLoader workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from modinv.data.decode import IMAGE_EXTENSIONS, array_to_rgb, is_image_file, read_image
from modinv.data.transforms import augment_image, resize_image, resize_masks, scale_boxes
from modinv.errors import ModinvError, brief

# Spec forms, for messages and the CLI's help.
SOURCE_SPECS: tuple[str, ...] = (
    "samples[:all|NAME,NAME...]",
    "folder:PATH",
    "coco:ROOT[:split]",
    "imagenet:ROOT[:split]",
)

# The colour photographs scikit-image ships (public domain or CC0; see skimage.data's docstrings):
# what "samples" yields. "chelsea" is the cat.
SAMPLE_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")
# Further real images, added by "samples:all": colour, but not everyday scenes (a deep-sky field,
# a microscopy stain, a retina), and two grayscale photos (converted to RGB).
EXTRA_SAMPLES: tuple[str, ...] = ("hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins")

DEFAULT_COCO_SPLIT = "val2017"


class DataWarning(UserWarning):
    """An item of an image source could not be used and was skipped."""


class ImageSource(Dataset):
    """A sequence of images (and, for COCO, their annotations) at a fixed size.

    ``source[i]`` is a dict with at least ``"image"`` (float32 3×H×W in [0, 1]), ``"index"`` (i)
    and ``"name"`` (file path or sample name), or ``None`` when item i cannot be read (the reason
    goes to ``source.skipped`` in the process that read it, and to a :class:`DataWarning`).
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
            reason = brief(exc)
            self.skipped[name] = reason
            warnings.warn(f"skipped unusable image {name} ({reason})", DataWarning, stacklevel=2)
            return None
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


class SampleSource(ImageSource):
    """Real photographs bundled with scikit-image (no download): see :data:`SAMPLE_PHOTOS`."""

    kind = "samples"

    def __init__(self, names: tuple[str, ...] | list[str] = SAMPLE_PHOTOS, **kw: Any) -> None:
        super().__init__(**kw)
        known = SAMPLE_PHOTOS + EXTRA_SAMPLES
        bad = [n for n in names if n not in known]
        if bad:
            raise ModinvError(f"unknown sample photo {bad[0]!r}; valid names: {', '.join(known)}")
        self.names = list(names)

    def _read(self, index: int) -> np.ndarray:
        import skimage.data

        return array_to_rgb(getattr(skimage.data, self.names[index])())


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
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
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
            index = {s: i for i, s in enumerate(imagenet_synsets())}
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


class CocoSource(ImageSource):
    """COCO images with their instance annotations, read by pycocotools.

    Files: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/<split>/<file_name>``. Every image
    of the annotation file is an item (sorted by id), also those without objects. Item keys besides
    image/index/name: ``"boxes"`` float32 N×4 xyxy pixels on the resized image, ``"labels"`` int64 N
    COCO category ids (1..90, gaps kept, DETR's convention), ``"masks"`` bool N×H×W (unless
    ``masks=False``), ``"image_id"`` int and ``"orig_size"`` int64 (h, w) of the annotation file.
    Crowd annotations are left out unless ``include_crowd=True`` (then ``"iscrowd"`` bool N too);
    boxes are clipped to the image and empty ones dropped (with their masks), as DETR's loader does.
    An annotation without a usable polygon/RLE gets its box as mask. ``augment`` is refused: a
    random crop would have to move boxes and masks.

    ``coco`` is the pycocotools ``COCO`` object (for COCOeval), ``categories`` maps id -> name.
    """

    kind = "coco"
    supports_augment = False

    def __init__(
        self,
        root: str | Path,
        split: str = DEFAULT_COCO_SPLIT,
        masks: bool = True,
        include_crowd: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.root = existing_path(root, "COCO folder")
        self.split = split
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        if not self.annotation_file.is_file():
            raise ModinvError(
                f"COCO annotation file {self.annotation_file} not found "
                f"(expected ROOT/annotations/instances_{split}.json)"
            )
        self.image_dir = self.root / split
        if not self.image_dir.is_dir():
            raise ModinvError(f"COCO image folder {self.image_dir} not found (expected ROOT/{split}/ with the images)")
        self.coco = load_coco(self.annotation_file)
        self.with_masks = bool(masks)
        self.include_crowd = bool(include_crowd)
        self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in self.coco.dataset["categories"]}
        self.image_ids = sorted(self.coco.imgs)
        self.paths = [self.image_dir / self.coco.imgs[i]["file_name"] for i in self.image_ids]
        self.names = [str(p) for p in self.paths]

    def _read(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])

    def _extras(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        boxes, labels, crowd, masks = [], [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            is_crowd = bool(ann.get("iscrowd", 0))
            if is_crowd and not self.include_crowd:
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
            if x1 <= x0 or y1 <= y0:
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(int(ann["category_id"]))
            crowd.append(is_crowd)
            if self.with_masks:
                masks.append(self._mask(ann, h, w, (x0, y0, x1, y1)))
        out: dict[str, Any] = {
            "boxes": scale_boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (h, w), self.size),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        if self.with_masks:
            stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
            out["masks"] = resize_masks(stacked, self.size)
        if self.include_crowd:
            out["iscrowd"] = torch.tensor(crowd, dtype=torch.bool)
        out["image_id"] = int(image_id)
        out["orig_size"] = torch.tensor([h, w], dtype=torch.int64)
        return out

    def _mask(self, ann: dict, h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
        segm = ann.get("segmentation")
        if isinstance(segm, list):
            segm = [p for p in segm if len(p) >= 6]  # pycocotools needs 3+ points per polygon
        if segm:
            with warnings.catch_warnings():  # pycocotools' decode trips a numpy-2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = self.coco.annToMask({**ann, "segmentation": segm})
            if mask.shape == (h, w):
                return mask.astype(np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)  # no usable segmentation: the box
        x0, y0, x1, y1 = box
        mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = 1
        return mask


def open_source(spec: str, size: tuple[int, int], augment: bool = False, seed: int = 0, **options: Any) -> ImageSource:
    """The image source named by ``spec``, yielding float32 3×H×W images in [0, 1] at ``size``.

    Specs: ``samples`` (scikit-image's colour photos, :data:`SAMPLE_PHOTOS`; ``samples:all`` adds
    :data:`EXTRA_SAMPLES`, ``samples:chelsea,coffee`` picks), ``folder:PATH`` (every image under
    PATH, recursively, or one image file), ``coco:ROOT[:split]`` (pycocotools; split defaults to
    val2017; see :class:`CocoSource`), ``imagenet:ROOT[:split]`` (class-per-folder; see
    :class:`ImageNetSource`). Images are resized to exactly ``size`` = (H, W), ignoring the aspect
    ratio as the paper's code did. ``augment``/``seed``: seeded random crop + flip (not for COCO).
    ``options`` go to the source: ``masks``/``include_crowd`` (coco), ``label_map`` (imagenet),
    ``limit`` (any: keep the first n items).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModinvError(f"empty image source; valid sources: {', '.join(SOURCE_SPECS)}")
    spec = spec.strip()
    limit = options.pop("limit", None)
    kind, _, rest = spec.partition(":")
    common = {"size": size, "augment": augment, "seed": seed, "spec": spec}
    try:
        if kind == "samples":
            names = SAMPLE_PHOTOS
            if rest == "all":
                names = SAMPLE_PHOTOS + EXTRA_SAMPLES
            elif rest:
                names = tuple(n.strip() for n in rest.split(",") if n.strip())
            source: ImageSource = SampleSource(names, **options, **common)
        elif kind in ("folder", "coco", "imagenet"):
            if not rest:
                raise ModinvError(f"image source {spec!r} lacks a path; write e.g. {kind}:/data/{kind}")
            if kind == "folder":
                source = FolderSource(rest, **options, **common)
            elif kind == "coco":
                root, split = split_root(rest)
                source = CocoSource(root, split=split or DEFAULT_COCO_SPLIT, **options, **common)
            else:
                root, split = split_root(rest)
                source = ImageNetSource(root, split=split, **options, **common)
        else:
            hint = f" (to read the images in that folder, write folder:{spec})" if Path(spec).expanduser().exists() else ""
            raise ModinvError(f"unknown image source {spec!r}{hint}; valid sources: {', '.join(SOURCE_SPECS)}")
    except TypeError as exc:  # an option the source does not take
        raise ModinvError(f"bad option for image source {spec!r}: {exc}") from None
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ModinvError(f"limit must be a positive number of images, got {limit!r}")
        source.names = source.names[:limit]
    return source


def load_images(items: str | Path | list[str | Path], size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """Images named on a command line as one float32 B×3×H×W batch in [0, 1], and their names.

    Each entry is an image file, a folder (all its images, recursively) or a sample photo name
    (``chelsea``); an entry that cannot be read is an error here, since the user named it.
    """
    if isinstance(items, (str, Path)):
        items = [items]
    size = check_size(size)
    images, names = [], []
    for entry in items:
        path = Path(entry).expanduser()
        if not path.exists() and str(entry) in SAMPLE_PHOTOS + EXTRA_SAMPLES:
            source: ImageSource = SampleSource([str(entry)], size=size)
        elif not path.exists():
            raise ModinvError(f"image {path} does not exist (nor is it a sample photo: {', '.join(SAMPLE_PHOTOS)})")
        else:
            source = FolderSource(path, size=size)
        for i in range(len(source)):
            try:
                array = source._read(i)
            except Exception as exc:  # noqa: BLE001
                raise ModinvError(f"cannot read image {source.names[i]} ({brief(exc)})") from None
            images.append(resize_image(torch.from_numpy(array).permute(2, 0, 1), size))
            names.append(source.names[i] if source.kind == "samples" else Path(source.names[i]).stem)
    if not images:
        raise ModinvError("no images given")
    return torch.stack(images), names


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
    p = Path(path).expanduser()
    if not p.exists():
        raise ModinvError(f"{what} {p} does not exist")
    return p


def split_root(rest: str) -> tuple[str, str | None]:
    """``ROOT[:split]`` -> (ROOT, split or None); a path that exists as written is all ROOT."""
    if Path(rest).expanduser().exists() or ":" not in rest:
        return rest, None
    root, split = rest.rsplit(":", 1)
    if not split or "/" in split or os.sep in split:
        return rest, None
    return root, split


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, following links once, hidden entries skipped), sorted."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f))
    return sorted(found)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synset ids in class-index order (from timm's bundled list)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")  # read the file without importing timm (slow)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location, "data", "_info", "imagenet_synsets.txt")
        if path.is_file():
            return path.read_text().split()
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def load_coco(annotation_file: Path):
    """A pycocotools COCO index of ``annotation_file``, with one-sentence errors for bad files."""
    from pycocotools.coco import COCO

    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ModinvError(
            f"COCO annotation file {annotation_file} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModinvError(f"cannot read COCO annotation file {annotation_file} ({exc})") from None
    problem = None
    if not isinstance(data, dict):
        problem = "its top level is not an object"
    else:
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                problem = f"it has no {key!r} list"
                break
        else:
            for img in data["images"]:
                if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys():
                    problem = "an entry of 'images' lacks id, file_name, height or width"
                    break
            for ann in data["annotations"]:
                if not isinstance(ann, dict) or not {"image_id", "bbox", "category_id"} <= ann.keys():
                    problem = "an entry of 'annotations' lacks image_id, bbox or category_id"
                    break
            for cat in data["categories"]:
                if not isinstance(cat, dict) or "id" not in cat:
                    problem = "an entry of 'categories' lacks its id"
                    break
    if problem:
        raise ModinvError(f"COCO annotation file {annotation_file} is malformed: {problem}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco
