"""The demo's photos: every freely licensed photo that the installed packages ship, split into
training photos and the three held-out photos that are shown and evaluated.

The photos are :data:`modinv.data.KNOWN_SAMPLES`: scikit-image's colour photos (astronaut, cat,
coffee, rocket, Hubble deep field, a microscopy stain, a retina), its grayscale photos that state a
free licence (cameraman, coins, clock, lettering, cell, brick, grass, gravel) and matplotlib's
portrait of Grace Hopper; each is public domain, CC0 or "no known copyright restrictions" by the
notes of the package that ships it. Left out: images that are not photos (logos, a colour wheel, a
checkerboard, a horse silhouette, text scans), photos without a licence statement (moon, page, the
Middlebury motorcycle pair), tiny crops (microaneurysms, 102 px; LFW faces, 25 px). scikit-learn's
two sample photos would need scikit-learn, which modinv does not depend on.

Measured (MobileNetV2 at 128×128, 150 steps of 6 crops, seed 0, held-out MSE s4/s8/s16/s32,
mean-image baseline 0.040): the 6 training photos of ``samples:all`` 0.0069/0.0244/0.0646/0.1147;
these 13: 0.0072/0.0205/0.0499/0.0834; the 9 everyday scenes among them (no stain, retina, deep
field, cell) 0.0070/0.0288/0.0704/0.0900: the unusual photos help. Tried and left out: random
colour-channel permutations and 20% grayscale (0.0082/0.0275/0.0645/0.0848), 25% grayscale alone
(0.0075/0.0204/0.0515/0.0849), 2×2 mosaics of crops of four photos in half of the items
(0.0082/0.0223/0.0533/0.1006), crops down to 10% of the area instead of 50% (0.0070/0.0187/0.0592/0.0842).
At 224×224 and 300 steps (float32): 6 photos 0.0045/0.0205/0.0594/0.1166, these 13
0.0057/0.0215/0.0534/0.1045 (baseline 0.0406). s16 and s32 stay above the baseline: on the training
photos they are below it (0.025 and 0.041 vs 0.051), so they memorise what 13 photos cannot teach
them to generalise (the paper trains on ImageNet or COCO); the demo report says so per stage.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from modinv.data import DEMO_HELD_OUT, KNOWN_SAMPLES, SampleSource
from modinv.errors import ModinvError

DEFAULT_HELD_OUT: tuple[str, ...] = DEMO_HELD_OUT  # the rest ("samples:demo") trains
DEFAULT_PHOTOS: tuple[str, ...] = KNOWN_SAMPLES
PHOTO_SOURCE = ("freely licensed sample photos shipped with scikit-image and matplotlib (public domain, CC0 or no "
                "known copyright restrictions)")


class DecodedSamples(SampleSource):
    """Sample photos decoded once per process: the demo draws thousands of crops from a few photos,
    and decoding a PNG costs more than cropping it."""

    _decoded: dict[str, np.ndarray] = {}

    def _read(self, index: int) -> np.ndarray:
        name = self.names[index]
        if name not in self._decoded:
            self._decoded[name] = super()._read(index)
        return self._decoded[name].copy()


def split_photos(held_out: Sequence[str] = DEFAULT_HELD_OUT,
                 photos: Sequence[str] = DEFAULT_PHOTOS) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` sample photo names: every photo of ``photos`` not held out trains."""
    held = list(dict.fromkeys(str(n) for n in held_out))
    if len(held) < len(list(held_out)):  # the mean-image baseline of one photo repeated is 0
        twice = next(n for n in held if [str(m) for m in held_out].count(n) > 1)
        raise ModinvError(f"the photo {twice!r} is held out more than once; name each held-out photo once (a "
                          "repeated photo would make the mean-image baseline meaningless)")
    photos = list(dict.fromkeys(str(n) for n in photos))
    unknown = [n for n in held + photos if n not in KNOWN_SAMPLES]
    if unknown:
        raise ModinvError(f"unknown sample photo {unknown[0]!r}; valid names: {', '.join(KNOWN_SAMPLES)}")
    if not held:
        raise ModinvError("hold out at least one photo: the demo shows and evaluates held-out photos only")
    train = [n for n in photos if n not in held]
    if not train:
        raise ModinvError("every photo is held out; leave at least one for training")
    return train, held
