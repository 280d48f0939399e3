"""Decoding image files of any common format into float RGB arrays in [0, 1].

Pillow does the decoding; this module only normalises what Pillow hands back:

* grayscale (``1``, ``L``), palette (``P``), CMYK, YCbCr, LAB, HSV -> RGB by Pillow's conversions
  (CMYK naively, without colour management; embedded ICC profiles are ignored, as torchvision does);
* 16-bit grayscale (``I;16*``) -> divided by 65535, so no precision is lost before resizing;
  32-bit integer (``I``) and float (``F``) have no fixed white, so the range is read from the
  values, as image viewers do: [0, 1] (float only), else 8-bit, 16-bit or 32-bit range by the
  largest value, negatives and NaN as black;
* transparency (``RGBA``, ``LA``, ``PA``, a palette or RGB image with a transparent colour) ->
  **composited over white** (``rgb * alpha + (1 - alpha)``): the colour a viewer shows, whereas
  dropping alpha exposes whatever the encoder left under transparent pixels (often black);
* multi-frame files (GIF, animated WebP, multi-page TIFF) -> their first frame;
* EXIF orientation is **not** applied: pixels come out as stored, the frame COCO's annotations
  and torchvision's readers use;
* huge files are reduced while they are decoded, so that memory stays bounded: an image of more
  than :data:`REDUCE_ABOVE_PIXELS` (16.8 megapixels, 4096×4096) is reduced by the smallest whole
  factor that brings it to at most that many pixels. JPEG is decoded at reduced size by Pillow's
  draft mode (DCT scaling by 1/2, 1/4 or 1/8: the full-size image never exists in memory); other
  formats are reduced (box filter, ``Image.reduce``) right after decoding, in their 8/16-bit form,
  before the float conversion that would cost 12 bytes a pixel. Files of more than
  :data:`MAX_IMAGE_PIXELS` (179 megapixels, about 13,400×13,400, Pillow's decompression-bomb
  limit) are refused. A 12000×12000 PNG thus costs about 0.5 GB instead of 5 GB, and images up to
  16.8 megapixels (all of COCO and ImageNet) decode exactly as before.

Anything Pillow cannot read completely (not an image, truncated, unsupported mode, too large)
raises; the image sources turn that into a skipped item, counted.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# Lower-case file suffixes treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")

# Images with more pixels than this are reduced while decoding (see the module notes).
REDUCE_ABOVE_PIXELS: int = 4096 * 4096
# Images with more pixels than this are refused: Pillow's own decompression-bomb limit.
MAX_IMAGE_PIXELS: int = 178_956_970


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as float32 H×W×3 RGB in [0, 1] (first frame; see module notes);
    reduced while decoding when it has more than :data:`REDUCE_ABOVE_PIXELS` pixels.

    Raises whatever Pillow raises for a file it cannot decode completely (``OSError`` for
    truncated data, ``PIL.UnidentifiedImageError`` for non-images, ...), and ``ValueError`` for
    an image of more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    with warnings.catch_warnings():  # the limit is checked below, in one sentence
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            src = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image too large: {exc}") from None
        with src:
            return to_rgb_array(decode_reduced(src))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image file at ``path`` as stored, read from its header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                return img.size
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image too large: {exc}") from None


def decode_reduced(img: Image.Image) -> Image.Image:
    """Decode the opened ``img`` completely (truncated files fail here), reduced to at most
    :data:`REDUCE_ABOVE_PIXELS` pixels: JPEG by draft mode while decoding, others right after."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image too large: {w}×{h} is {w * h / 1e6:.0f} megapixels, above the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
        )
    factor = reduction_factor(w, h)
    if factor > 1 and img.format == "JPEG":
        img.draft(None, (math.ceil(w / factor), math.ceil(h / factor)))  # DCT scaling, at least this size
    img.load()
    factor = reduction_factor(*img.size)
    return _reduce(img, factor) if factor > 1 else img


def reduction_factor(width: int, height: int) -> int:
    """The smallest whole factor that reduces a width×height image to at most
    :data:`REDUCE_ABOVE_PIXELS` pixels (1 when it is small enough)."""
    limit = REDUCE_ABOVE_PIXELS
    factor = max(1, math.ceil(math.sqrt(width * height / limit)))
    while math.ceil(width / factor) * math.ceil(height / factor) > limit:
        factor += 1
    return factor


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """``img`` reduced by ``factor`` (box filter) in a mode where averaging pixels is meaningful."""
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA") or (_has_alpha(img) and img.mode not in ("RGBA", "LA")):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")  # palette indices cannot be averaged
    elif img.mode.startswith("I;16"):  # reduce takes 32-bit integers: reduce those, then back to 16-bit
        return img.convert("I").reduce(factor).convert("I;16")
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce does not handle
        return img.convert("RGB").reduce(factor)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image as float32 H×W×3 RGB in [0, 1]; alpha composited over white."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        gray = np.asarray(img).astype(np.float32) / 65535.0
        return _gray_to_rgb(np.clip(gray, 0.0, 1.0))
    if mode in ("F", "I"):
        gray = np.asarray(img, dtype=np.float64)
        peak = float(np.nanmax(gray)) if gray.size and not np.isnan(gray).all() else 0.0
        if peak > 1.0 or mode == "I":
            gray = gray / next(top for top in (255.0, 65535.0, 2.0**31 - 1, peak) if peak <= top)
        return _gray_to_rgb(np.clip(np.nan_to_num(gray), 0.0, 1.0).astype(np.float32))
    if _has_alpha(img):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return np.ascontiguousarray(rgba[..., :3] * alpha + (1.0 - alpha), dtype=np.float32)
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """An in-memory image (H×W gray, H×W×3 RGB, H×W×4 RGBA; uint8, uint16, bool or float in
    [0, 1]) as float32 H×W×3 RGB in [0, 1], by the same rules as files."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535.0
    else:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    if a.ndim == 2:
        return _gray_to_rgb(a)
    if a.ndim == 3 and a.shape[2] == 4:
        alpha = a[..., 3:4]
        return np.ascontiguousarray(a[..., :3] * alpha + (1.0 - alpha), dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 3:
        return np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        return _gray_to_rgb(a[..., 0])
    raise ValueError(f"cannot read an array of shape {a.shape} as an image")


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return img.mode in ("P", "L", "RGB") and "transparency" in img.info


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2), dtype=np.float32)
