"""COCO instance annotations as an image source (pycocotools): boxes, category ids, masks."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modinv.data.base import DataWarning, ImageSource, existing_path
from modinv.data.decode import image_size, read_image
from modinv.data.transforms import resize_masks, scale_boxes
from modinv.errors import ModinvError
from modinv.fileio import os_error_sentence

DEFAULT_COCO_SPLIT = "val2017"
# The largest annotated image side accepted (COCO's own images are at most 640 px a side): a size of
# 100000×100000 would make every mask allocate 10 GB before anything else could fail.
MAX_ANNOTATED_SIDE = 16384
# How far outside its image a polygon point may lie (fraction of the side; annotation tools snap
# points slightly past the border): huge or non-finite points make pycocotools crash or fill memory.
POLYGON_MARGIN = 0.1


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
        info = self.coco.imgs[self.image_ids[index]]
        found = image_size(self.paths[index])
        if found != (int(info["width"]), int(info["height"])):  # masks and boxes would be misplaced
            raise ValueError(f"the annotation file gives image {info['id']} the size {info['width']}×{info['height']} "
                             f"(width×height), but the file is {found[0]}×{found[1]}")
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


def load_coco(annotation_file: Path):
    """A pycocotools COCO index of ``annotation_file``, with one-sentence errors for bad files.

    Refused: a file that is not JSON or lacks COCO's lists and keys, image entries without a
    positive integer size, image or annotation ids used twice (pycocotools would silently attach
    one image's annotations to another, or count one annotation twice), boxes that are not four
    numbers. Annotations whose box holds NaN or an infinity are dropped, counted in
    ``coco.dropped_annotations`` and summarised in one :class:`~modinv.data.DataWarning`.
    """
    from pycocotools.coco import COCO

    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ModinvError(
            f"COCO annotation file {annotation_file} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise ModinvError(f"cannot read COCO annotation file {annotation_file} ({exc})") from None
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, annotation_file, "read COCO annotation file")) from None
    problem = _structure_problem(data) or _content_problem(data)
    if problem:
        raise ModinvError(f"COCO annotation file {annotation_file} is malformed: {problem}")
    data["annotations"], dropped = _finite_boxes(data["annotations"])
    if dropped:
        warnings.warn(
            f"dropped {len(dropped)} annotation(s) of {annotation_file} whose box holds NaN or an infinite "
            f"value (first: annotation id {dropped[0]['id']} of image {dropped[0]['image_id']})",
            DataWarning, stacklevel=3,
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    coco.dropped_annotations = len(dropped)
    return coco


def _structure_problem(data: Any) -> str | None:
    """What keeps ``data`` from being a COCO instances file at all (lists and required keys)."""
    if not isinstance(data, dict):
        return "its top level is not an object"
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            return f"it has no {key!r} list"
    if any(not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys()
           for img in data["images"]):
        return "an entry of 'images' lacks id, file_name, height or width"
    if any(not isinstance(ann, dict) or not {"image_id", "bbox", "category_id"} <= ann.keys()
           for ann in data["annotations"]):
        return "an entry of 'annotations' lacks image_id, bbox or category_id"
    if any("id" not in ann for ann in data["annotations"]):
        return "an entry of 'annotations' lacks its id"
    if any(not isinstance(cat, dict) or "id" not in cat for cat in data["categories"]):
        return "an entry of 'categories' lacks its id"
    return None


def _content_problem(data: dict) -> str | None:
    """Values that pycocotools would accept but that would give wrong targets."""
    first: dict[Any, str] = {}
    sizes: dict[Any, tuple[int, int]] = {}
    for img in data["images"]:
        if not _whole(img["id"]):
            return f"image id {img['id']!r} of {img['file_name']!r} is not an integer"
        if not (_whole(img["height"]) and _whole(img["width"]) and img["height"] > 0 and img["width"] > 0):
            return f"image {img['id']} has height {img['height']!r} and width {img['width']!r} (need positive integers)"
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            return f"image {img['id']} has no file name"
        if img["id"] in first:
            return (f"image id {img['id']} is used twice (for {first[img['id']]!r} and {img['file_name']!r}); "
                    "every image needs its own id, or annotations would be attached to the wrong photo")
        if max(img["height"], img["width"]) > MAX_ANNOTATED_SIDE:
            return (f"image {img['id']} has height {img['height']!r} and width {img['width']!r}, above the "
                    f"{MAX_ANNOTATED_SIDE} pixels a side modinv accepts")
        first[img["id"]] = img["file_name"]
        sizes[img["id"]] = (int(img["height"]), int(img["width"]))
    seen: set[Any] = set()
    for ann in data["annotations"]:
        if not _whole(ann["id"]):
            return f"annotation id {ann['id']!r} is not an integer"
        if ann["id"] in seen:

            return f"annotation id {ann['id']} is used twice; every annotation needs its own id"
        seen.add(ann["id"])
        box = ann["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_number(v) for v in box):
            return f"annotation {ann['id']} has bbox {box!r}, not four numbers [x, y, width, height]"
        if not _whole(ann["category_id"]):
            return f"annotation {ann['id']} has category_id {ann['category_id']!r}, not an integer"
        segm = _segmentation_problem(ann.get("segmentation"), sizes.get(ann["image_id"]))
        if segm:
            return f"annotation {ann['id']} (image {ann['image_id']}) {segm}"
    return None


def _segmentation_problem(segm: Any, size: tuple[int, int] | None) -> str | None:
    """What is wrong with an annotation's segmentation for an image of ``size`` (h, w): polygons
    need finite points near the image, run-length encodings the image's own size."""
    if segm is None or size is None:
        return None
    h, w = size
    if isinstance(segm, dict):  # run-length encoding
        if segm.get("size") != [h, w]:
            return f"has a run-length mask of size {segm.get('size')!r}, not its image's [{h}, {w}]"
        return None
    if not isinstance(segm, list):
        return f"has a segmentation of type {type(segm).__name__}, neither polygons nor a run-length mask"
    for polygon in segm:
        if not isinstance(polygon, list) or not all(_number(v) for v in polygon) or len(polygon) % 2:
            return "has a polygon that is not a list of x, y numbers"
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            return "has a polygon point that is NaN or infinite"
        mx, my = POLYGON_MARGIN * w + 1, POLYGON_MARGIN * h + 1
        outside = ((points[:, 0] < -mx) | (points[:, 0] > w + mx) | (points[:, 1] < -my) | (points[:, 1] > h + my))
        if outside.any():
            x, y = points[outside.argmax()]
            return f"has a polygon point ({x:g}, {y:g}) far outside its {w}×{h} image"
    return None


def _finite_boxes(annotations: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(kept, dropped)``: annotations whose box is finite, and those with NaN or infinities."""
    kept, dropped = [], []
    for ann in annotations:
        (kept if all(math.isfinite(v) for v in ann["bbox"]) else dropped).append(ann)
    return kept, dropped


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and float(value).is_integer()


@functools.lru_cache(maxsize=1)
def coco_category_names() -> tuple[str, ...]:
    """The 91 COCO category names indexed by category id (0..90; ``"N/A"`` for the ids COCO 2017
    leaves unused), the layout of DETR's class logits; from torchvision's detection weights
    metadata (no download)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index 0 is "__background__"
    return ("N/A",) + tuple(str(n) for n in names[1:])
