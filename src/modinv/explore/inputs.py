"""What the explorer accepts as an image: a sample photo by name, or an uploaded file.

Uploads are decoded by :func:`modinv.data.load_images` (the readers every other command uses,
:mod:`modinv.data.decode`): not an image, truncated or too large (Pillow's decompression-bomb
limit) become one :class:`~modinv.errors.ModinvError` sentence that the page shows. Files the
decoder converts (16-bit, CMYK, palette, transparency) are accepted with a note saying what was
done; images smaller than :data:`MIN_SIDE` pixels a side carry nothing a model can use once
stretched to its input size and are refused.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from modinv.data import KNOWN_SAMPLES, load_images
from modinv.data.decode import MAX_IMAGE_PIXELS
from modinv.errors import ModinvError, brief

# The smallest side (pixels) of an accepted upload.
MIN_SIDE = 8
# Mode of an uploaded file -> the note shown when the decoder converts it.
CONVERSION_NOTES = {
    "CMYK": "CMYK image converted to RGB without colour management",
    "I;16": "16-bit image scaled to [0, 1] (65535 = white)",
    "I": "32-bit integer image read as 16-bit and scaled to [0, 1]",
    "F": "floating-point image clipped to [0, 1]",
    "P": "palette image converted to RGB",
    "RGBA": "transparent pixels composited over white",
    "LA": "transparent pixels composited over white",
    "L": "grayscale image repeated to three channels",
    "1": "black-and-white image repeated to three channels",
}


@dataclasses.dataclass(frozen=True)
class Photo:
    """One image at the model's input size: ``image`` float32 3×H×W in [0, 1], its ``name`` and the
    ``notes`` on how it was read."""

    image: Tensor
    name: str
    notes: tuple[str, ...] = ()


def sample_photo(name: str, size: tuple[int, int]) -> Photo:
    """Sample photo ``name`` (one of :data:`modinv.data.KNOWN_SAMPLES`) at ``size`` (H, W)."""
    if name not in KNOWN_SAMPLES:
        raise ModinvError(f"unknown sample photo {name!r}; valid names: {', '.join(KNOWN_SAMPLES)}")
    images, _ = load_images([name], size)
    return Photo(images[0], name)


def read_upload(path: str | Path, size: tuple[int, int]) -> Photo:
    """The uploaded file at ``path`` at ``size`` (H, W), read as every command reads images; one
    sentence (ModinvError) for a file that is not a usable image."""
    path = Path(path)
    mode, (width, height) = _header(path)
    if min(width, height) < MIN_SIDE:
        raise ModinvError(f"the image is {width}×{height} pixels; upload one at least {MIN_SIDE}×{MIN_SIDE} "
                          f"pixels (it is stretched to {size[1]}×{size[0]})")
    images, _ = load_images([path], size)
    note = CONVERSION_NOTES.get("I;16" if mode.startswith("I;16") else mode)
    return Photo(images[0], path.stem, (note,) if note else ())


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` from the file's header, without decoding its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                mode, size = img.mode, img.size
        except Image.DecompressionBombError:
            raise ModinvError(f"the image is too large: above Pillow's limit of {MAX_IMAGE_PIXELS / 1e6:.0f} "
                              "megapixels") from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
            why = brief(exc).replace(str(path), path.name)
            raise ModinvError(f"the file {path.name!r} is not an image that can be read ({why})") from None
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ModinvError(f"the image is too large: {size[0]}×{size[1]} is {size[0] * size[1] / 1e6:.0f} "
                          f"megapixels, above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f}")
    return mode, size


def to_uint8(image: Tensor) -> Tensor:
    """Float 3×H×W in [0, 1] -> uint8 H×W×3 (rounded), as the page's PNG files hold it."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()
