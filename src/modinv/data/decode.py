"""Decoding image files of any common format into float RGB arrays in [0, 1].

Pillow does the decoding; this module only normalises what Pillow hands back:

* grayscale (``1``, ``L``), palette (``P``), CMYK, YCbCr, LAB, HSV -> RGB by Pillow's conversions
  (CMYK naively, without colour management; embedded ICC profiles are ignored, as torchvision does);
* 16-bit grayscale (``I;16*``, and ``I``, which is read as 16-bit) -> divided by 65535, so no
  precision is lost before resizing; 32-bit float (``F``) is taken as [0, 1] (or 8/16-bit range
  when its values exceed 1) and clipped;
* transparency (``RGBA``, ``LA``, ``PA``, a palette or RGB image with a transparent colour) ->
  **composited over white** (``rgb * alpha + (1 - alpha)``): the colour a viewer shows, whereas
  dropping alpha exposes whatever the encoder left under transparent pixels (often black);
* multi-frame files (GIF, animated WebP, multi-page TIFF) -> their first frame;
* EXIF orientation is **not** applied: pixels come out as stored, the frame COCO's annotations
  and torchvision's readers use.

Anything Pillow cannot read completely (not an image, truncated, unsupported mode) raises; the
image sources turn that into a skipped item with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Lower-case file suffixes treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm",
)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as float32 H×W×3 RGB in [0, 1] (first frame; see module notes).

    Raises whatever Pillow raises for a file it cannot decode completely (``OSError`` for
    truncated data, ``PIL.UnidentifiedImageError`` for non-images, ...).
    """
    with Image.open(path) as img:
        img.load()  # decode fully now: truncated files fail here, not later
        return to_rgb_array(img)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image as float32 H×W×3 RGB in [0, 1]; alpha composited over white."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        gray = np.asarray(img).astype(np.float32) / 65535.0
        return _gray_to_rgb(np.clip(gray, 0.0, 1.0))
    if mode == "F":
        gray = np.asarray(img, dtype=np.float32)
        peak = float(np.nanmax(gray)) if gray.size else 0.0
        if peak > 1.0:
            gray = gray / (255.0 if peak <= 255.0 else 65535.0)
        return _gray_to_rgb(np.clip(np.nan_to_num(gray), 0.0, 1.0))
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
