"""The six colour filters of the colour analysis and the pairwise MSE between filtered versions.

Computed in floating-point HSV with scikit-image's ``rgb2hsv`` / ``hsv2rgb`` (hue in [0, 1) of a
full turn; no 8-bit rounding of hue, saturation or value anywhere):

==============  =====================================================================================
``red``         hue set to 0° (saturation and value kept)
``green``       hue set to 120°
``blue``        hue set to 240°
``shift120``    hue rotated by +120° (mod 360°)
``shift240``    hue rotated by +240°
``grayscale``   the luminance Y = 0.2125 R + 0.7154 G + 0.0721 B (scikit-image's ``rgb2gray``, the
                Rec. 709 weights applied to the [0, 1] values as they are, no gamma linearisation)
                replicated to the three channels
==============  =====================================================================================

The five hue filters act inside an object mask (pixels outside it are returned bit for bit);
grayscale acts on the whole image (:data:`WHOLE_IMAGE_FILTERS`), as in the paper and the design.
Pixels without saturation (grays) have no hue, so a hue filter leaves them unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from modinv.errors import ModinvError

FILTERS: tuple[str, ...] = ("red", "green", "blue", "shift120", "shift240", "grayscale")
HUE_SET: dict[str, float] = {"red": 0.0, "green": 120.0, "blue": 240.0}  # degrees
HUE_SHIFT: dict[str, float] = {"shift120": 120.0, "shift240": 240.0}  # degrees
WHOLE_IMAGE_FILTERS: tuple[str, ...] = ("grayscale",)
GRAYSCALE_DEFINITION = (
    "Y = 0.2125 R + 0.7154 G + 0.0721 B of the [0, 1] RGB values (skimage.color.rgb2gray, no gamma "
    "linearisation), replicated to 3 channels, on the whole image"
)
LABELS = {"red": "red", "green": "green", "blue": "blue", "shift120": "120° shift", "shift240": "240° shift",
          "grayscale": "grayscale", "none": "none"}


# -- the filters ---------------------------------------------------------------------------------------

def apply_filter(image: Tensor | np.ndarray, name: str, mask: Tensor | np.ndarray | None = None,
                 channel_axis: int = -3) -> Tensor | np.ndarray:
    """``image`` recolored by filter ``name`` (one of :data:`FILTERS`), inside ``mask`` if given.

    ``image``: float RGB in [0, 1], a torch tensor or numpy array, one image 3×H×W or a batch
    B×3×H×W (channels at ``channel_axis``; pass ``-1`` for H×W×3 arrays). ``mask``: bool H×W, or
    B×H×W for a batch, True where the filter applies; ``None`` filters every pixel. Pixels outside
    the mask are returned exactly as given. Returns the same type, dtype, device and shape.
    The computation runs in float64 numpy HSV (scikit-image); see the module doc for each filter.
    """
    if name not in FILTERS:
        raise ModinvError(f"unknown color filter {name!r}; valid: {', '.join(FILTERS)}")
    is_torch = isinstance(image, Tensor)
    if is_torch:
        if not image.is_floating_point():
            raise ModinvError(f"apply_filter takes float images in [0, 1], got dtype {image.dtype}")
        array = image.detach().to("cpu", torch.float64).numpy()
    else:
        array = np.asarray(image)
        if not np.issubdtype(array.dtype, np.floating):
            raise ModinvError(f"apply_filter takes float images in [0, 1], got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.ndim < 3 or array.shape[channel_axis] != 3:
        raise ModinvError(f"apply_filter takes RGB images with 3 channels at axis {channel_axis}, "
                          f"got shape {tuple(array.shape)}")
    rgb = np.moveaxis(array, channel_axis, -1)  # ...×H×W×3
    out = _filter_rgb(np.clip(rgb, 0.0, 1.0), name)
    if mask is not None:
        m = mask.detach().to("cpu").numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        m = m.astype(bool)
        try:
            m = np.broadcast_to(m, rgb.shape[:-1])
        except ValueError:
            raise ModinvError(f"mask of shape {tuple(m.shape)} does not fit images of shape "
                              f"{tuple(rgb.shape[:-1])} (H×W or B×H×W)") from None
        out = np.where(m[..., None], out, rgb)
    out = np.moveaxis(out, -1, channel_axis)
    if is_torch:
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=image.device, dtype=image.dtype)
    return out.astype(np.asarray(image).dtype, copy=False)


def _filter_rgb(rgb: np.ndarray, name: str) -> np.ndarray:
    """Filter float64 ...×3 RGB in [0, 1] (channels last) everywhere."""
    from skimage.color import hsv2rgb, rgb2gray, rgb2hsv

    if name == "grayscale":
        return np.repeat(rgb2gray(rgb)[..., None], 3, axis=-1)
    hsv = rgb2hsv(rgb)
    if name in HUE_SET:
        hsv[..., 0] = HUE_SET[name] / 360.0
    else:
        hsv[..., 0] = np.mod(hsv[..., 0] + HUE_SHIFT[name] / 360.0, 1.0)
    return np.clip(hsv2rgb(hsv), 0.0, 1.0)


def perturbations(image: Tensor, mask: Tensor | None, filters: Sequence[str] = FILTERS) -> Tensor:
    """The filtered versions of one image 3×H×W: F×3×H×W, hue filters inside ``mask``, the whole-image
    filters (grayscale) on every pixel."""
    return torch.stack([apply_filter(image, f, None if f in WHOLE_IMAGE_FILTERS else mask) for f in filters])


def image_filter(name: str) -> Callable[[Tensor], Tensor]:
    """A batch transform B×3×H×W -> B×3×H×W applying filter ``name`` to the whole image."""
    if name not in FILTERS:
        raise ModinvError(f"unknown color filter {name!r}; valid: {', '.join(FILTERS)}")

    def transform(images: Tensor) -> Tensor:
        return apply_filter(images, name)

    transform.__name__ = f"filter_{name}"
    return transform


# -- the metric ----------------------------------------------------------------------------------------

def pairwise_mse(versions: Sequence[Tensor] | Tensor) -> Tensor:
    """Average pairwise MSE between K versions of the same image(s).

    ``versions``: a list of K tensors B×3×H×W (K versions of a batch of B images; also a K×B×3×H×W
    tensor) -> B values; or one K×3×H×W tensor (K versions of one image) -> a 0-dim tensor. The value
    is the mean over the K(K-1)/2 unordered pairs (i < j) of the per-image MSE
    ``mean((v_i - v_j)²)`` over all channels and pixels, computed in float64.
    """
    if isinstance(versions, (list, tuple)):
        stacked = torch.stack([torch.as_tensor(v) for v in versions])
        single = False
    else:
        stacked = torch.as_tensor(versions)
        single = stacked.ndim == 4
        if single:
            stacked = stacked[:, None]
    if stacked.ndim != 5:
        raise ModinvError(f"pairwise_mse takes K versions of B×3×H×W (or one K×3×H×W), got {tuple(stacked.shape)}")
    k = stacked.shape[0]
    if k < 2:
        raise ModinvError(f"pairwise_mse needs at least 2 versions, got {k}")
    x = stacked.double().flatten(2)  # K×B×P
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(k):
        for j in range(i + 1, k):
            total += (x[i] - x[j]).pow(2).mean(-1)
    out = total / (k * (k - 1) / 2)
    return out[0] if single else out
