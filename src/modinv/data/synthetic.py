"""Tiny, deterministic data sets built from the sample photos, for tests and offline demos.

``make_tiny_coco(root)`` writes a COCO-format detection/segmentation set (real photos, hand-placed
polygons around the cat, the astronaut, the cup and the spoon, a crowd RLE region, an image without
objects) that the COCO source, the colour analysis, DETR's set loss and COCO AP can all read.
``make_image_folder(root)`` writes a class-per-folder set named by ImageNet-1k synsets.
Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# COCO's own ids and names for the categories used (gaps kept, as in COCO).
TINY_COCO_CATEGORIES: list[dict] = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 47, "name": "cup", "supercategory": "kitchen"},
    {"id": 50, "name": "spoon", "supercategory": "kitchen"},
]

# Per sample photo: (category id, polygon as (x, y) fractions of width and height). Convex polygons.
_OBJECTS: dict[str, list[tuple[int, list[tuple[float, float]]]]] = {
    "astronaut": [
        (1, [(0.30, 0.03), (0.60, 0.03), (0.70, 0.55), (0.70, 0.99), (0.05, 0.99), (0.08, 0.55)]),
    ],
    "chelsea": [
        (17, [(0.10, 0.02), (0.90, 0.02), (0.85, 0.75), (0.60, 0.98), (0.35, 0.98), (0.15, 0.75)]),
    ],
    "coffee": [
        (47, [(0.29, 0.05), (0.69, 0.05), (0.69, 0.55), (0.55, 0.70), (0.35, 0.75), (0.30, 0.55)]),
        (50, [(0.70, 0.17), (0.54, 0.70), (0.67, 0.80)]),
    ],
    "rocket": [],  # an image without objects, as COCO has
}
# Crowd regions (iscrowd=1, uncompressed RLE, as COCO stores crowds): sample -> (category, x0, y0, x1, y1 fractions).
_CROWDS: dict[str, tuple[int, float, float, float, float]] = {
    "astronaut": (1, 0.0, 0.0, 0.18, 0.35),
}
_COCO_ORDER = ("astronaut", "chelsea", "coffee", "rocket")

# ImageNet-1k synset folders of make_image_folder: synset -> sample photo.
IMAGE_FOLDER_CLASSES: dict[str, str] = {
    "n02123045": "chelsea",  # tabby cat (index 281)
    "n03063599": "coffee",  # coffee mug (504)
    "n03773504": "rocket",  # missile (657)
}


def make_tiny_coco(
    root: str | Path,
    n_images: int = 3,
    size: tuple[int, int] | None = None,
    split: str = "val2017",
    image_format: str = "png",
) -> Path:
    """Write a tiny COCO set under ``root`` and return ``root``.

    Files: ``root/annotations/instances_<split>.json`` and ``root/<split>/<12-digit id>.<fmt>``.
    Image i (id i + 1) is the sample photo ``astronaut, chelsea, coffee, rocket`` [i mod 4] at its own
    size, or resized to ``size`` = (H, W). Objects: person (astronaut, plus a crowd RLE region),
    cat (chelsea), cup and spoon (coffee), nothing on the rocket; convex polygons, with ``bbox``
    the polygon's extent and ``area`` the pixel area of its pycocotools mask. ``image_format``
    "png" (lossless: pixel values exact) or "jpg" (like COCO).
    """
    import skimage.data

    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    root = Path(root)
    image_dir = root / split
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        sample = _COCO_ORDER[i % len(_COCO_ORDER)]
        photo = Image.fromarray(getattr(skimage.data, sample)()).convert("RGB")
        if size is not None:
            photo = photo.resize((size[1], size[0]), Image.BILINEAR)
        w, h = photo.size
        image_id = i + 1
        file_name = f"{image_id:012d}.{image_format}"
        _save(photo, image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 1})
        for category, polygon in _OBJECTS[sample]:
            xy = [round(v * s, 2) for x, y in polygon for v, s in ((x, w), (y, h))]
            xs, ys = xy[0::2], xy[1::2]
            rle = mask_utils.merge(mask_utils.frPyObjects([xy], h, w))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": [xy],
                "area": float(mask_utils.area(rle)),
                "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
                "iscrowd": 0,
            })
        if sample in _CROWDS:
            category, fx0, fy0, fx1, fy1 = _CROWDS[sample]
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[int(fy0 * h) : int(fy1 * h), int(fx0 * w) : int(fx1 * w)] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category,
                "segmentation": {"size": [h, w], "counts": _uncompressed_counts(mask)},
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 1,
            })
    dataset = {
        "info": {"description": "modinv tiny COCO (scikit-image sample photos)", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "CC0 / public domain (see skimage.data)", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": TINY_COCO_CATEGORIES,
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset, indent=1))
    return root


def make_image_folder(
    root: str | Path,
    per_class: int = 2,
    size: tuple[int, int] = (96, 128),
    split: str | None = None,
    image_format: str = "jpg",
) -> Path:
    """Write a class-per-folder (ImageNet-like) set under ``root`` (or ``root/split``); return ``root``.

    Folders are the ImageNet-1k synsets of :data:`IMAGE_FOLDER_CLASSES` (tabby cat, coffee mug,
    missile, from the sample photos chelsea, coffee, rocket), so sorted-folder labels are 0, 1, 2
    and ImageNet labels 281, 504, 657. Each holds ``per_class`` views of its photo (full, mirrored,
    crops) resized to ``size`` = (H, W), named ``<synset>_<k>.<fmt>``.
    """
    import skimage.data

    base = Path(root) / split if split else Path(root)
    for synset, sample in IMAGE_FOLDER_CLASSES.items():
        folder = base / synset
        folder.mkdir(parents=True, exist_ok=True)
        photo = Image.fromarray(getattr(skimage.data, sample)()).convert("RGB")
        w, h = photo.size
        for k in range(per_class):
            view = photo
            shrink = 0.1 * ((k // 2) % 4)  # 0, 0, 0.1, 0.1, 0.2, ... of each side cropped
            if shrink:
                view = view.crop((int(shrink * w), int(shrink * h), int((1 - shrink) * w), int((1 - shrink) * h)))
            if k % 2:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            _save(view.resize((size[1], size[0]), Image.BILINEAR), folder / f"{synset}_{k:04d}.{image_format}")
    return Path(root)


def _save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, quality=95)
    else:
        image.save(path)


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts: run lengths of the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return [int(c) for c in counts]
