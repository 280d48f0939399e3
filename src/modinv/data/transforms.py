"""Geometry of items: resizing images, boxes and masks, and the seeded crop/flip augmentation.

Images are resized to exactly the requested (H, W), ignoring the aspect ratio, as the paper's code
did (DETR at 480×640, ViT at 224×224): bilinear with antialiasing, on float data. Boxes are scaled
by the same per-axis factors and masks resized by nearest neighbour (pixel centres), so boxes,
masks and image stay aligned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Random-crop parameters of the augmentation (torchvision's RandomResizedCrop algorithm):
# crop area as a fraction of the image, and aspect-ratio range of the crop (sampled log-uniformly).
CROP_SCALE: tuple[float, float] = (0.5, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Float 3×h×w -> 3×H×W, bilinear with antialiasing, clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.contiguous()
    out = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Binary N×h×w -> bool N×H×W by nearest neighbour at pixel centres."""
    if masks.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    out = F.interpolate(masks[None].to(torch.uint8), size=tuple(size), mode="nearest-exact")
    return out[0].bool()


def scale_boxes(boxes: Tensor, orig_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """xyxy pixel boxes of an h×w image -> the same boxes on the H×W resized image."""
    (h, w), (H, W) = orig_size, size
    factors = torch.tensor([W / w, H / h, W / w, H / h], dtype=torch.float32)
    return boxes.to(torch.float32) * factors


def crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, torchvision's RandomResizedCrop rule, drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centred crop whose aspect ratio lies in range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment_image(image: Tensor, size: tuple[int, int], rng: np.random.Generator) -> Tensor:
    """Random crop (:data:`CROP_SCALE` of the area, :data:`CROP_RATIO` aspect), resize to ``size``,
    then a horizontal flip with probability 1/2; every random draw comes from ``rng``."""
    top, left, h, w = crop_params(image.shape[-2], image.shape[-1], rng)
    out = resize_image(image[:, top : top + h, left : left + w], size)
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out.contiguous()
