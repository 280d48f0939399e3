"""Hostile data: COCO files that would give wrong targets, NaN boxes, many unusable files, huge
images, folders that cannot be read. Each is refused in one sentence, or dropped and counted in one
line, never a traceback, never silently wrong."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from modinv.data import DataWarning, load_images, make_loader, open_source, read_image
from modinv.data import decode
from modinv.data.synthetic import make_tiny_coco
from modinv.errors import ModinvError

SIZE = (24, 32)


def _coco(tmp_path: Path, edit) -> Path:
    root = make_tiny_coco(tmp_path / "coco", n_images=3, size=(30, 40))
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return root


def _refused(spec: str) -> str:
    with pytest.raises(ModinvError) as info:
        open_source(spec, SIZE)
    assert "\n" not in str(info.value)
    return str(info.value)


# -- COCO -------------------------------------------------------------------------------------------------

def test_duplicate_image_ids_are_refused(tmp_path):
    """Two photos with one id: pycocotools kept the second photo under the id and gave it the first
    photo's annotations (the cat photo came out labelled "person")."""
    def duplicate(data):
        data["images"][1]["id"] = data["images"][0]["id"]

    root = _coco(tmp_path, duplicate)
    message = _refused(f"coco:{root}")
    assert message == (f"COCO annotation file {root}/annotations/instances_val2017.json is malformed: image id 1 is "
                       "used twice (for '000000000001.png' and '000000000002.png'); every image needs its own id, "
                       "or annotations would be attached to the wrong photo")


@pytest.mark.parametrize("edit,problem", [
    (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "annotation id 1 is used twice"),
    (lambda d: d["annotations"][0].pop("id"), "an entry of 'annotations' lacks its id"),  # was a KeyError
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation 1 has bbox [1, 2, 3], not four numbers"),
    (lambda d: d["annotations"][0].update(bbox="1 2 3 4"), "annotation 1 has bbox '1 2 3 4', not four numbers"),
    (lambda d: d["annotations"][0].update(category_id="cat"), "annotation 1 has category_id 'cat', not an integer"),
    (lambda d: d["images"][0].update(height=0), "image 1 has height 0 and width 40 (need positive integers)"),
    (lambda d: d["images"][0].update(id="one"), "image id 'one' of '000000000001.png' is not an integer"),
])
def test_annotations_that_would_give_wrong_targets_are_refused(edit, problem, tmp_path):
    """Each of these used to make its image "unusable" with a misleading reason (or a traceback)."""
    message = _refused(f"coco:{_coco(tmp_path, edit)}")
    assert " is malformed: " in message and problem in message


def _point(value):
    def edit(data):
        data["annotations"][0]["segmentation"][0][2] = value
    return edit


@pytest.mark.parametrize("edit,problem", [
    (_point(1e30), "annotation 1 (image 1) has a polygon point (1e+30, "),  # was a segfault in pycocotools
    (_point(1e9), "far outside its 40×30 image"),  # grew memory to the machine's limit
    (_point(-1e12), "far outside its 40×30 image"),
    (_point(float("nan")), "annotation 1 (image 1) has a polygon point that is NaN or infinite"),
    (_point(float("inf")), "has a polygon point that is NaN or infinite"),
    (_point("7"), "has a polygon that is not a list of x, y numbers"),
    (lambda d: d["annotations"][0]["segmentation"][0].pop(), "has a polygon that is not a list of x, y numbers"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [100000, 100000], "counts": "0"}),
     "has a run-length mask of size [100000, 100000], not its image's [30, 40]"),
    (lambda d: d["annotations"][0].update(segmentation="polygon"), "has a segmentation of type str"),
    (lambda d: d["images"][0].update(height=100000, width=100000),
     "image 1 has height 100000 and width 100000, above the 16384 pixels a side modinv accepts"),
    (lambda d: d["images"][0].update(width=16385), "above the 16384 pixels a side"),
])
def test_annotation_numbers_are_checked_before_pycocotools(edit, problem, tmp_path):
    message = _refused(f"coco:{_coco(tmp_path, edit)}")
    assert message.startswith(f"COCO annotation file {tmp_path}/coco/annotations/instances_val2017.json is malformed")
    assert problem in message


def test_a_polygon_just_past_the_border_is_kept(tmp_path):
    root = _coco(tmp_path, _point(41.5))  # annotation tools snap points slightly past the edge
    source = open_source(f"coco:{root}", SIZE)
    assert source[0]["masks"].shape[0] >= 1


def test_an_image_whose_annotated_size_is_not_its_own_is_skipped_and_named(tmp_path):
    """The masks would be placed on a 40×30 grid over a 20×30 photo: silently wrong before."""
    root = _coco(tmp_path, lambda d: None)
    Image.new("RGB", (20, 30)).save(root / "val2017" / "000000000002.png")
    source = open_source(f"coco:{root}", SIZE)
    assert source[0] is not None and source[2] is not None
    item = source.load(1)
    assert item.reason == ("ValueError: the annotation file gives image 2 the size 40×30 (width×height), "
                           "but the file is 20×30")


def test_non_finite_boxes_are_dropped_and_counted_once(tmp_path):
    def poison(data):
        data["annotations"][0]["bbox"][0] = float("nan")  # the astronaut
        data["annotations"][2]["bbox"][3] = float("inf")  # the cat

    root = _coco(tmp_path, poison)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_source(f"coco:{root}", SIZE, include_crowd=True)
        items = [source[i] for i in range(len(source))]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert messages == [f"dropped 2 annotation(s) of {root}/annotations/instances_val2017.json whose box holds NaN "
                        "or an infinite value (first: annotation id 1 of image 1)"]
    assert source.coco.dropped_annotations == 2
    assert all(np.isfinite(a["bbox"]).all() for a in source.coco.dataset["annotations"])  # what COCOeval sees
    assert items[0]["iscrowd"].tolist() == [True]  # the astronaut's crowd region is kept, its box dropped
    assert items[1]["boxes"].shape == (0, 4)
    assert all(torch.isfinite(item["boxes"]).all() for item in items)


# -- unusable files: counted, named, summarised once per pass -------------------------------------------

@pytest.fixture(scope="module")
def fifty_bad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fifty")
    for i in range(50):
        (root / f"bad{i:02d}.jpg").write_text("not an image")
    for i in range(3):
        Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(root / f"good{i}.png")
    return root


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fifty_unusable_files_give_one_summary_per_pass(fifty_bad, num_workers):
    """It used to be 50 warnings and no total; now one line per pass, and every file named."""
    loader = make_loader(open_source(f"folder:{fifty_bad}", SIZE), batch_size=16, num_workers=num_workers)
    for _ in range(2):  # two passes (epochs): one summary each
        logged = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = sum(batch["image"].shape[0] for batch in loader if logged.update(batch["skipped_files"]) or True)
        lines = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"skipped unusable image files: 50 of 53 in folder:{fifty_bad} (first ")
        assert lines[0].endswith(", and 49 more)")
        assert images == 3 and len(loader.skipped) == 50 and loader.seen == 53
        assert logged == loader.skipped  # the batches name them as they come, for a run's log
        assert sorted(Path(name).name for name in loader.skipped) == [f"bad{i:02d}.jpg" for i in range(50)]
        assert all(reason.startswith("UnidentifiedImageError: ") for reason in loader.skipped.values())


def test_a_subset_of_a_source_names_its_unusable_files(fifty_bad):
    """Training splits a source into Subsets: the names still come through."""
    source = open_source(f"folder:{fifty_bad}", SIZE)
    subset = torch.utils.data.Subset(source, [0, 50, 1])
    with pytest.warns(DataWarning, match=r"skipped unusable image files: 2 of 3 "):
        batches = list(make_loader(subset, batch_size=3))
    assert [Path(n).name for n in batches[0]["skipped_files"]] == ["bad00.jpg", "bad01.jpg"]
    assert batches[0]["name"] == [source.names[50]]


def test_loader_and_source_arguments_are_checked():
    source = open_source("samples", SIZE)
    with pytest.raises(ModinvError, match="the number of data loader workers must be 0 or more, got -1"):
        make_loader(source, batch_size=2, num_workers=-1)  # was torch's ValueError
    with pytest.raises(ModinvError, match="the seed of an image source must be 0 or more, got -1"):
        open_source("samples", SIZE, augment=True, seed=-1)  # was: every item silently "unusable"


# -- huge images ------------------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A gray PNG of width×height zeros, written row by row (no full image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_reduction_factor():
    assert decode.reduction_factor(4096, 4096) == 1
    assert decode.reduction_factor(4097, 4096) == 2
    assert decode.reduction_factor(12000, 12000) == 3
    for w, h in [(12000, 12000), (65000, 3), (5000, 4000), (30001, 10007)]:
        f = decode.reduction_factor(w, h)

        def fits(factor: int) -> bool:
            return -(-w // factor) * -(-h // factor) <= decode.REDUCE_ABOVE_PIXELS

        assert fits(f) and (f == 1 or not fits(f - 1)), (w, h, f)  # the smallest factor that fits


@pytest.mark.parametrize("kind", ["png", "palette", "sixteen", "rgba"])
def test_large_images_are_reduced_before_the_float_conversion(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "REDUCE_ABOVE_PIXELS", 1000)
    path = tmp_path / f"{kind}.png"
    rgb = Image.new("RGB", (90, 60), (200, 40, 90))
    {"png": lambda: rgb, "palette": lambda: rgb.convert("P", palette=Image.Palette.ADAPTIVE),
     "sixteen": lambda: Image.fromarray(np.full((60, 90), 32768, dtype=np.uint16)),
     "rgba": lambda: Image.new("RGBA", (90, 60), (255, 0, 0, 128))}[kind]().save(path)
    seen = []
    monkeypatch.setattr(decode, "to_rgb_array", lambda img: seen.append(img.size) or to_rgb(img))
    array = read_image(path)
    assert seen == [(30, 20)] and array.shape == (20, 30, 3)  # 5400 pixels > 1000: reduced by 3
    expected = {"png": (200 / 255, 40 / 255, 90 / 255), "palette": (200 / 255, 40 / 255, 90 / 255),
                "sixteen": (32768 / 65535,) * 3, "rgba": (1.0, 1 - 128 / 255, 1 - 128 / 255)}[kind]
    np.testing.assert_allclose(array.mean(axis=(0, 1)), expected, atol=2e-3)


to_rgb = decode.to_rgb_array


def test_large_jpegs_are_decoded_at_reduced_size(tmp_path, monkeypatch):
    """Draft mode: the decoder itself scales by 1/8, the full-size image never exists."""
    monkeypatch.setattr(decode, "REDUCE_ABOVE_PIXELS", 10_000)
    Image.new("RGB", (800, 800), (10, 200, 30)).save(tmp_path / "big.jpg", quality=95)
    drafts, reductions = [], []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: drafts.append(a) or draft(self, *a))
    monkeypatch.setattr(decode, "_reduce", lambda img, f: reductions.append(f))
    array = read_image(tmp_path / "big.jpg")
    assert drafts == [(None, (100, 100))] and reductions == [] and array.shape == (100, 100, 3)
    np.testing.assert_allclose(array.mean(axis=(0, 1)), np.array([10, 200, 30]) / 255, atol=0.02)


def test_images_above_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    _png_header_only(tmp_path / "huge.png", 20000, 20000)  # 400 megapixels, 1 MB on disk
    with pytest.raises(ValueError, match="image too large"):
        read_image(tmp_path / "huge.png")
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 1000)  # below Pillow's own limit: modinv's sentence
    Image.new("RGB", (40, 30)).save(tmp_path / "over.png")
    with pytest.raises(ValueError) as info:
        read_image(tmp_path / "over.png")
    assert str(info.value) == "image too large: 40×30 is 0 megapixels, above the limit of 0 megapixels"
    source = open_source(f"folder:{tmp_path / 'over.png'}", SIZE)
    assert source.load(0).reason.startswith("ValueError: image too large: 40×30")
    with pytest.raises(ModinvError, match=r"^cannot read image .*over.png \(ValueError: image too large"):
        load_images([tmp_path / "over.png"], SIZE)


MEMORY_PROBE = """
import resource, sys
from modinv.data import decode
decode.REDUCE_ABOVE_PIXELS = int(sys.argv[3])
decode.read_image(sys.argv[2])  # warm up: plugins, allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
array = decode.read_image(sys.argv[1])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(array.shape[0] * array.shape[1], grown // 1024)
"""


def test_decoding_a_huge_png_takes_bounded_memory(tmp_path):
    """A 4000×4000 gray PNG (19 KB) with the reduction starting at 1 megapixel: before, decoding
    grew the process by about 270 MB (16 million pixels as float32 RGB); now by the 16 MB of the
    8-bit decode plus a 1-megapixel float image."""
    _png_header_only(tmp_path / "huge.png", 4000, 4000)
    Image.new("L", (4, 4)).save(tmp_path / "small.png")
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "huge.png"), str(tmp_path / "small.png"),
                           "1000000"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    pixels, grown_mb = (int(v) for v in done.stdout.split())
    assert pixels <= 1_000_000 and grown_mb < 100, (pixels, grown_mb)


# -- folders that cannot be read --------------------------------------------------------------------------

def _denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def test_a_subfolder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "a" / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "one.png")
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (_ for _ in ()).throw(_denied(p))
                        if Path(p).name == "locked" else scandir(p))
    assert _refused(f"folder:{tmp_path / 'a'}") == f"cannot read folder '{tmp_path / 'a' / 'locked'}': permission denied"


def test_an_imagenet_root_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "n01440764").mkdir()
    monkeypatch.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(_denied(self)))
    assert _refused(f"imagenet:{tmp_path}") == f"cannot read folder '{tmp_path}': permission denied"


def test_a_path_that_cannot_be_looked_at_is_named(tmp_path, monkeypatch):
    def exists(self, *args, **kwargs):
        raise _denied(self)

    monkeypatch.setattr(Path, "exists", exists)
    assert _refused(f"folder:{tmp_path}/x") == f"cannot read image folder '{tmp_path}/x': permission denied"


def test_a_coco_annotation_file_that_cannot_be_read(tmp_path, monkeypatch):
    root = make_tiny_coco(tmp_path / "coco", n_images=1, size=(30, 40))
    import modinv.data.coco as coco

    monkeypatch.setattr(coco, "open", lambda path, *a, **k: (_ for _ in ()).throw(_denied(path)), raising=False)
    assert _refused(f"coco:{root}") == (
        f"cannot read COCO annotation file '{root}/annotations/instances_val2017.json': permission denied")


def test_source_options_that_would_select_nothing_are_refused():
    assert _refused("samples:,").startswith("image source 'samples:,' names no sample photo; valid names: astronaut")
    with pytest.raises(ModinvError, match="limit must be a positive number of images, got True"):
        open_source("samples", SIZE, limit=True)  # was one image, as if limit=1


# -- integer images: the range a viewer shows --------------------------------------------------------------

@pytest.mark.parametrize("peak, scale", [(200, 255), (40000, 65535), (2**31 - 1, 2**31 - 1)])
def test_a_32_bit_integer_tiff_decodes_in_the_range_its_values_use(tmp_path, peak, scale):
    """Mode I was divided by 65535: an 8-bit-range TIFF came out near-black."""
    values = np.linspace(0, peak, 48).astype(np.int32).reshape(6, 8)
    Image.fromarray(values).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    rgb = read_image(tmp_path / "i32.tif")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 0], values / scale, atol=1e-6)


def test_negative_integer_pixels_are_black(tmp_path):
    Image.fromarray(np.array([[-5, 100]], dtype=np.int32)).save(tmp_path / "neg.tif")
    np.testing.assert_allclose(read_image(tmp_path / "neg.tif")[0, :, 0], [0.0, 100 / 255], atol=1e-6)


def test_a_reduced_16_bit_image_keeps_its_16_bit_range(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "REDUCE_ABOVE_PIXELS", 16)
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(tmp_path / "dark16.png")
    rgb = read_image(tmp_path / "dark16.png")
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb, 200 / 65535, atol=1e-6)  # dark, as stored: not read as 8-bit range
