"""Image sources: the sample photos, image folders, COCO and ImageNet, as torch Datasets.

``open_source(spec, size)`` is the entry point; every source yields dict items whose ``"image"`` is
float32 3×H×W RGB in [0, 1] at exactly ``size`` = (H, W) (aspect ratio ignored, as in the paper's
code). A file that cannot be used (not an image, truncated, missing) gives ``None`` instead of an
item, with a :class:`DataWarning`; :func:`modinv.data.collate` drops such ``None`` and counts them,
so a run over a messy folder never stops half-way, with or without DataLoader workers. The source
classes live in :mod:`modinv.data.base` (folders), :mod:`modinv.data.coco` and
:mod:`modinv.data.imagenet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modinv.data.base import FolderSource, ImageSource, check_size, path_exists, split_root

from modinv.data.coco import DEFAULT_COCO_SPLIT, CocoSource
from modinv.data.decode import array_to_rgb, read_image
from modinv.data.imagenet import ImageNetSource, resolve_label_map
from modinv.data.transforms import resize_image
from modinv.errors import ModinvError, brief

# Spec forms, for messages and the CLI's help.
SOURCE_SPECS: tuple[str, ...] = (
    "samples[:demo|all|NAME,NAME...]",
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
# More freely licensed photos, by name only (not in "samples:all", whose nine the tests size runs by):
# matplotlib's portrait of Grace Hopper (US Navy photo, public domain; matplotlib.cbook.get_sample_data)
# and scikit-image's grayscale photos that state a free licence: a wall clock (public domain),
# lettering on a wall ("text", public domain), a cell (CC0) and brick, grass and gravel textures (CC0).
MORE_SAMPLES: tuple[str, ...] = ("grace_hopper", "clock", "text", "cell", "brick", "grass", "gravel")
# the photos of MORE_SAMPLES that come from matplotlib's sample data, not scikit-image: their file names
MATPLOTLIB_SAMPLES: dict[str, str] = {"grace_hopper": "grace_hopper.jpg"}
KNOWN_SAMPLES: tuple[str, ...] = SAMPLE_PHOTOS + EXTRA_SAMPLES + MORE_SAMPLES
# What plain "samples" yields: the colour photos and four everyday grayscale ones, so that the
# default validation split (one photo) leaves seven for training.
DEFAULT_SAMPLES: tuple[str, ...] = SAMPLE_PHOTOS + ("camera", "coins", "clock", "grace_hopper")
# The photos `modinv demo` shows and evaluates, and the 13 it trains on ("samples:demo").
DEMO_HELD_OUT: tuple[str, ...] = ("chelsea", "coffee", "camera")
DEMO_PHOTOS: tuple[str, ...] = tuple(n for n in KNOWN_SAMPLES if n not in DEMO_HELD_OUT)
# the named sets of sample photos: "samples:<set>"
SAMPLE_SETS: dict[str, tuple[str, ...]] = {"demo": DEMO_PHOTOS, "all": KNOWN_SAMPLES}


class SampleSource(ImageSource):
    """Real photographs bundled with scikit-image or matplotlib (no download): see :data:`SAMPLE_PHOTOS`,
    :data:`EXTRA_SAMPLES` and :data:`MORE_SAMPLES`."""

    kind = "samples"

    def __init__(self, names: tuple[str, ...] | list[str] = DEFAULT_SAMPLES, **kw: Any) -> None:
        super().__init__(**kw)
        bad = [n for n in names if n not in KNOWN_SAMPLES]
        if bad:
            raise ModinvError(f"unknown sample photo {bad[0]!r}; valid names: {', '.join(KNOWN_SAMPLES)} (or the "
                              f"sets {', '.join(SAMPLE_SETS)})")
        self.names = list(names)

    def _read(self, index: int) -> np.ndarray:
        name = self.names[index]
        if name in MATPLOTLIB_SAMPLES:
            from matplotlib.cbook import get_sample_data

            return read_image(get_sample_data(MATPLOTLIB_SAMPLES[name], asfileobj=False))
        import skimage.data

        return array_to_rgb(getattr(skimage.data, name)())


def open_source(spec: str, size: tuple[int, int], augment: bool = False, seed: int = 0, **options: Any) -> ImageSource:
    """The image source named by ``spec``, yielding float32 3×H×W images in [0, 1] at ``size``.

    Specs: ``samples`` (8 photos, :data:`DEFAULT_SAMPLES`: scikit-image's colour photos and four
    grayscale ones), ``samples:demo`` (the 13 photos ``modinv demo`` trains on, :data:`DEMO_PHOTOS`),
    ``samples:all`` (all 16 of :data:`KNOWN_SAMPLES`), ``samples:chelsea,coffee`` (any of them by name),
    ``folder:PATH`` (every image under PATH, recursively, or one image file), ``coco:ROOT[:split]``
    (pycocotools; split defaults to val2017; see :class:`CocoSource`), ``imagenet:ROOT[:split]``
    (class-per-folder; see :class:`ImageNetSource`). Images are resized to exactly ``size`` = (H, W),
    ignoring the aspect ratio as the paper's code did. ``augment``/``seed``: seeded random crop +
    flip (not for COCO). ``options`` go to the source: ``masks``/``include_crowd`` (coco), ``label_map`` (imagenet),
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
            names = DEFAULT_SAMPLES
            if rest in SAMPLE_SETS:
                names = SAMPLE_SETS[rest]
            elif rest:
                names = tuple(n.strip() for n in rest.split(",") if n.strip())
                if not names:
                    raise ModinvError(f"image source {spec!r} names no sample photo; valid names: "
                                      f"{', '.join(KNOWN_SAMPLES)}")
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
            hint = f" (to read the images in that folder, write folder:{spec})" if path_exists(Path(spec).expanduser()) else ""
            raise ModinvError(f"unknown image source {spec!r}{hint}; valid sources: {', '.join(SOURCE_SPECS)}")
    except TypeError as exc:  # an option the source does not take
        raise ModinvError(f"bad option for image source {spec!r}: {exc}") from None
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:

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
        exists = path_exists(path, "image")
        if not exists and str(entry) in KNOWN_SAMPLES:
            source: ImageSource = SampleSource([str(entry)], size=size)
        elif not exists:
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


def image_tensors(items: Any) -> list[torch.Tensor]:
    """Images given in any of the usual forms as float32 3×h×w tensors in [0, 1], each at its own
    size: file paths (or sample photo names, :data:`KNOWN_SAMPLES`), PIL images, numpy arrays
    (H×W, H×W×3, H×W×4; uint8, uint16 or float in [0, 1]), tensors 3×h×w or B×3×h×w (float in
    [0, 1], or uint8), or a list mixing them."""
    from PIL import Image

    from modinv.data.decode import to_rgb_array

    if isinstance(items, torch.Tensor) and items.ndim == 4:
        items = list(items)
    elif not isinstance(items, (list, tuple)):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, (str, Path)):
            path = Path(item).expanduser()
            if not path_exists(path, "image") and str(item) in KNOWN_SAMPLES:
                out.append(torch.from_numpy(SampleSource([str(item)], size=(1, 1))._read(0)).permute(2, 0, 1).float())
                continue
            if not path_exists(path, "image"):
                raise ModinvError(f"image {str(path)!r} does not exist (nor is it a sample photo name)")
            try:
                array = read_image(path)
            except Exception as exc:  # noqa: BLE001 (Pillow raises many kinds)
                raise ModinvError(f"cannot read image {str(path)!r} ({brief(exc)})") from None
        elif isinstance(item, Image.Image):
            array = to_rgb_array(item)
        elif isinstance(item, np.ndarray):
            array = array_to_rgb(item)
        elif isinstance(item, torch.Tensor):
            if item.ndim != 3 or item.shape[0] not in (1, 3):
                raise ModinvError(f"an image tensor must be 3×H×W (or 1×H×W), got shape {tuple(item.shape)}")
            image = item.detach().cpu()
            image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float().clamp(0.0, 1.0)
            out.append(image.expand(3, -1, -1).contiguous())
            continue
        else:
            raise ModinvError(f"cannot read a {type(item).__name__} as an image; give paths, PIL images, arrays "
                              "or tensors")
        out.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float())
    if not out:
        raise ModinvError("no images given")
    return out


def task_source_options(spec: str, label_map: str = "auto") -> dict[str, Any]:
    """Options of :func:`open_source` for a task metric's data: no masks for COCO (boxes are enough),
    the resolved label map (see :func:`~modinv.data.imagenet.resolve_label_map`) for imagenet."""
    kind = spec.strip().partition(":")[0]
    if kind == "coco":
        return {"masks": False}
    if kind == "imagenet":
        return {"label_map": resolve_label_map(spec.strip(), label_map)}
    return {}
