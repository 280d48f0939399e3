"""Image sources for modinv: sample photos, image folders, COCO (pycocotools), ImageNet folders.

    source = modinv.data.open_source("coco:/data/coco", size=(480, 640))
    loader = modinv.data.make_loader(source, batch_size=32, shuffle=True, seed=0, num_workers=8)
    for batch in loader:
        batch["image"]          # float32 B×3×480×640 in [0, 1]; unusable files dropped,
        batch["skipped"]        # ... counted here,
        batch["skipped_files"]  # ... and named here: {path: reason}
        batch["boxes"]          # list of N_i×4 xyxy boxes on the resized image (COCO)
    loader.skipped              # {path: reason} of the whole pass, which ends with one summary
                                # DataWarning ("skipped unusable image files: 3 of 50 in ...")

Items are dicts: always ``image`` (float32 3×H×W RGB in [0, 1], resized to exactly ``size``
ignoring the aspect ratio, as the paper's code did), ``index`` and ``name``; COCO adds ``boxes``,
``labels`` (category ids), ``masks``, ``image_id``, ``orig_size``; ImageNet adds ``label``.
"""

from modinv.data.decode import IMAGE_EXTENSIONS, read_image
from modinv.data.loader import SourceLoader, collate, make_loader, skipped_summary
from modinv.data.base import DataWarning, FolderSource, ImageSource, Unusable
from modinv.data.coco import CocoSource
from modinv.data.imagenet import ImageNetSource, imagenet_class_names, imagenet_synsets, resolve_label_map
from modinv.data.sources import (
    DEFAULT_SAMPLES,
    DEMO_HELD_OUT,
    DEMO_PHOTOS,
    EXTRA_SAMPLES,
    KNOWN_SAMPLES,
    MORE_SAMPLES,
    SAMPLE_PHOTOS,
    SAMPLE_SETS,
    SOURCE_SPECS,
    SampleSource,
    image_tensors,
    load_images,
    open_source,
    task_source_options,
)

__all__ = [
    "DEFAULT_SAMPLES",
    "DEMO_HELD_OUT",
    "DEMO_PHOTOS",
    "SAMPLE_SETS",
    "EXTRA_SAMPLES",
    "KNOWN_SAMPLES",
    "MORE_SAMPLES",
    "IMAGE_EXTENSIONS",
    "SAMPLE_PHOTOS",
    "SOURCE_SPECS",
    "CocoSource",
    "DataWarning",
    "FolderSource",
    "ImageNetSource",
    "ImageSource",
    "SampleSource",
    "SourceLoader",
    "Unusable",
    "collate",
    "imagenet_class_names",
    "imagenet_synsets",
    "image_tensors",
    "load_images",
    "make_loader",
    "open_source",
    "read_image",
    "resolve_label_map",
    "skipped_summary",
    "task_source_options",
]

