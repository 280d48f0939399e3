"""modinv.data: image sources, odd files, COCO targets, loaders, augmentation, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modinv.data import DataWarning, collate, load_images, make_loader, open_source
from modinv.data.coco import coco_category_names
from modinv.data.synthetic import TINY_COCO_CATEGORIES, make_image_folder, make_tiny_coco
from modinv.errors import ModinvError

SIZE = (48, 64)


def _check_image(image: torch.Tensor, size=SIZE) -> None:
    assert image.dtype == torch.float32
    assert tuple(image.shape) == (3, *size)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


# -- samples --------------------------------------------------------------------------------------
def test_samples_are_real_colour_photos_with_the_cat():
    source = open_source("samples", SIZE)
    assert "chelsea" in source.names and len(source) >= 4
    for item in source:
        _check_image(item["image"])
        assert isinstance(item["name"], str)
        assert float(item["image"].std()) > 0.05  # a photo, not a flat image
    cat = source[source.names.index("chelsea")]["image"]
    assert not torch.allclose(cat[0], cat[2])  # colour, not gray
    assert open_source("samples:chelsea,coffee", SIZE).names == ["chelsea", "coffee"]
    assert len(open_source("samples", SIZE, limit=2)) == 2
    everything = open_source("samples:all", SIZE)
    assert "coins" in everything.names
    coins = everything[everything.names.index("coins")]["image"]
    assert torch.equal(coins[0], coins[1])  # grayscale converted to RGB


# -- folders and odd files ------------------------------------------------------------------------
def test_folder_finds_nested_files_of_several_formats(tmp_path):
    colour = (200, 40, 90)
    files = ["a/b/one.png", "a/two.JPG", "three.bmp", "c/four.tiff", "c/d/e/five.webp", "six.gif"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20), colour).save(tmp_path / rel)
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (30, 20), colour).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(f"folder:{tmp_path}", SIZE)
    assert sorted(Path(n).relative_to(tmp_path).as_posix() for n in source.names) == sorted(files)
    for item in source:
        _check_image(item["image"])
        rgb = item["image"].mean(dim=(1, 2)) * 255
        assert torch.allclose(rgb, torch.tensor(colour, dtype=torch.float32), atol=4), item["name"]
    single = open_source(f"folder:{tmp_path / 'three.bmp'}", SIZE)
    assert len(single) == 1


def test_odd_files_are_converted_or_skipped(odd_folder):
    source = open_source(f"folder:{odd_folder}", SIZE)
    items = {}
    with pytest.warns(DataWarning):
        for i in range(len(source)):
            items[Path(source.names[i]).name] = source[i]
    assert items["truncated.jpg"] is None and items["text.jpg"] is None
    assert set(Path(n).name for n in source.skipped) == {"truncated.jpg", "text.jpg"}
    good = {k: v["image"] for k, v in items.items() if v is not None}
    assert set(good) == {"gray.png", "rgba.png", "sixteen.png", "cmyk.jpg", "palette.gif"}
    for image in good.values():
        _check_image(image)
    # Grayscale: the value in all three channels.
    assert torch.allclose(good["gray.png"], torch.full((3, *SIZE), 100 / 255), atol=1e-6)
    # RGBA: composited over white: rgb * a + (1 - a).
    a = 128 / 255
    expected = torch.tensor([1.0, 1 - a, 1 - a]).view(3, 1, 1).expand(3, *SIZE)
    assert torch.allclose(good["rgba.png"], expected, atol=1e-5)
    # 16-bit: full precision.
    assert torch.allclose(good["sixteen.png"], torch.full((3, *SIZE), 32768 / 65535), atol=1e-6)
    # CMYK (0, 255, 255, 0) is red; the palette GIF is blue.
    assert torch.allclose(good["cmyk.jpg"].mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(good["palette.gif"].mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0]), atol=0.02)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_over_odd_files_never_crashes(odd_folder, num_workers):
    source = open_source(f"folder:{odd_folder}", SIZE)
    loader = make_loader(source, batch_size=3, shuffle=True, seed=1, num_workers=num_workers)
    seen, skipped = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, *SIZE)
            assert batch["image"].shape[0] == len(batch["name"]) == len(batch["index"])
            seen += batch["index"].tolist()
            skipped += batch["skipped"]
    assert skipped == 2 and len(seen) == 5 and len(set(seen)) == 5


def test_collate_of_only_unusable_items():
    batch = collate([None, None], size=SIZE)
    assert batch["skipped"] == 2 and batch["image"].shape == (0, 3, *SIZE) and batch["name"] == []


# -- COCO -----------------------------------------------------------------------------------------
def _coco_json(root: Path) -> dict:
    return json.loads((root / "annotations" / "instances_val2017.json").read_text())


def test_coco_category_names_are_indexed_by_category_id():
    names = coco_category_names()
    assert len(names) == 91 and names[0] == "N/A" and names[1] == "person" and names[90] == "toothbrush"
    assert [i for i, n in enumerate(names) if n == "N/A"] == [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert all(names[c["id"]] == c["name"] for c in TINY_COCO_CATEGORIES)


def test_tiny_coco_is_deterministic(tiny_coco, tmp_path):
    again = make_tiny_coco(tmp_path / "again")  # the root conftest's set: the default 3 images
    assert _coco_json(again) == _coco_json(tiny_coco)
    for path in sorted((tiny_coco / "val2017").iterdir()):
        assert (again / "val2017" / path.name).read_bytes() == path.read_bytes()


def test_coco_boxes_and_masks_match_the_annotations(tiny_coco):
    data = _coco_json(tiny_coco)
    size = (120, 160)
    source = open_source(f"coco:{tiny_coco}", size)
    assert len(source) == 3 and source.categories[17] == "cat"
    assert {c["id"] for c in TINY_COCO_CATEGORIES} == set(source.categories)
    for index in range(len(source)):
        item = source[index]
        _check_image(item["image"], size)
        info = next(i for i in data["images"] if i["id"] == item["image_id"])
        h, w = info["height"], info["width"]
        assert item["orig_size"].tolist() == [h, w]
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"]]
        sx, sy = size[1] / w, size[0] / h
        expected = torch.tensor(
            [[x * sx, y * sy, (x + bw) * sx, (y + bh) * sy] for x, y, bw, bh in (a["bbox"] for a in anns)]
        ).reshape(-1, 4)
        assert item["boxes"].dtype == torch.float32
        assert torch.allclose(item["boxes"], expected, atol=1e-4)
        assert item["labels"].tolist() == [a["category_id"] for a in anns]
        assert item["masks"].dtype == torch.bool and item["masks"].shape == (len(anns), *size)
        for ann, box, mask in zip(anns, item["boxes"], item["masks"]):
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            cx, cy = poly.mean(axis=0)  # convex polygon: its vertex mean lies inside
            assert mask[int(cy * sy), int(cx * sx)]
            x0, y0, x1, y1 = box.tolist()
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert not mask[:, : max(int(x0) - 1, 0)].any() and not mask[:, int(x1) + 2 :].any()
            assert not mask[: max(int(y0) - 1, 0)].any() and not mask[int(y1) + 2 :].any()
            assert abs(xs.min().item() - x0) <= 1.5 and abs(xs.max().item() + 1 - x1) <= 1.5
            assert abs(ys.min().item() - y0) <= 1.5 and abs(ys.max().item() + 1 - y1) <= 1.5
            assert mask.sum().item() == pytest.approx(ann["area"] * sx * sy, rel=0.1)


def test_coco_triangle_mask_is_empty_outside_the_polygon(tiny_coco):
    size = (400, 600)  # the coffee photo's own size: no rescaling
    source = open_source(f"coco:{tiny_coco}", size)
    item = source[2]
    spoon = item["masks"][item["labels"].tolist().index(50)]
    # Triangle (0.70, 0.17), (0.54, 0.70), (0.67, 0.80) of 600×400: its box's top-left corner is outside.
    x0, y0, _, _ = item["boxes"][item["labels"].tolist().index(50)].tolist()
    assert not spoon[int(y0) + 2, int(x0) + 2]
    assert spoon[int(0.55 * 400), int(0.64 * 600)]


def test_coco_crowd_is_optional_and_read_from_rle(tiny_coco):
    size = (512, 512)  # astronaut's own size
    default = open_source(f"coco:{tiny_coco}", size)[0]
    assert "iscrowd" not in default and default["labels"].tolist() == [1]
    with_crowd = open_source(f"coco:{tiny_coco}:val2017", size, include_crowd=True)[0]
    assert with_crowd["iscrowd"].tolist() == [False, True]
    crowd = with_crowd["masks"][1]
    expected = torch.zeros(size, dtype=torch.bool)
    expected[: int(0.35 * 512), : int(0.18 * 512)] = True
    assert torch.equal(crowd, expected)
    no_masks = open_source(f"coco:{tiny_coco}", size, masks=False)[0]
    assert "masks" not in no_masks


def test_coco_loader_keeps_variable_length_targets(tmp_path):
    """Four images, the last (the rocket) without objects: empty box and mask tensors, kept."""
    root = make_tiny_coco(tmp_path / "coco", n_images=4)
    size = (120, 160)
    source = open_source(f"coco:{root}", size)
    assert source[3]["boxes"].shape == (0, 4) and source[3]["masks"].shape == (0, *size)
    source = open_source(f"coco:{root}", SIZE)
    batch = next(iter(make_loader(source, batch_size=4, seed=0)))
    assert batch["image"].shape == (4, 3, *SIZE) and batch["skipped"] == 0
    assert [len(b) for b in batch["boxes"]] == [1, 1, 2, 0]
    assert [m.shape[0] for m in batch["masks"]] == [1, 1, 2, 0]
    assert batch["image_id"].tolist() == [1, 2, 3, 4] and batch["orig_size"].shape == (4, 2)


def test_tiny_coco_works_with_cocoeval(tiny_coco):
    from pycocotools.cocoeval import COCOeval

    source = open_source(f"coco:{tiny_coco}", SIZE)
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in source.coco.dataset["annotations"]
        if not a["iscrowd"]
    ]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(source.coco, source.coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_coco_skips_a_missing_image_file(tiny_coco, tmp_path):
    root = make_tiny_coco(tmp_path / "c", n_images=2, size=(30, 40))
    (root / "val2017" / "000000000002.png").unlink()
    source = open_source(f"coco:{root}", SIZE)
    with pytest.warns(DataWarning, match="000000000002"):
        assert source[1] is None
    assert source[0] is not None


# -- ImageNet folders -----------------------------------------------------------------------------
def test_imagenet_folder_labels(tmp_path):
    make_image_folder(tmp_path / "flat", per_class=2)
    make_image_folder(tmp_path / "nested", per_class=3, split="val")
    flat = open_source(f"imagenet:{tmp_path / 'flat'}", SIZE)
    assert flat.classes == ["n02123045", "n03063599", "n03773504"]
    assert [item["label"] for item in flat] == [0, 0, 1, 1, 2, 2]
    for item in flat:
        assert Path(item["name"]).parent.name == flat.classes[item["label"]]
        _check_image(item["image"])
    nested = open_source(f"imagenet:{tmp_path / 'nested'}", SIZE)  # ROOT holding val/
    assert len(nested) == 9 and [nested[i]["label"] for i in (0, 3, 8)] == [0, 1, 2]
    assert len(open_source(f"imagenet:{tmp_path / 'nested'}:val", SIZE)) == 9
    std = open_source(f"imagenet:{tmp_path / 'flat'}", SIZE, label_map="imagenet")
    assert sorted(set(std.labels)) == [281, 504, 657]
    batch = next(iter(make_loader(flat, batch_size=6)))
    assert batch["label"].tolist() == [0, 0, 1, 1, 2, 2]


# -- augmentation ---------------------------------------------------------------------------------
def test_augment_is_reproducible_per_seed():
    a = open_source("samples", SIZE, augment=True, seed=3)
    b = open_source("samples", SIZE, augment=True, seed=3)
    c = open_source("samples", SIZE, augment=True, seed=4)
    plain = open_source("samples", SIZE)
    for i in range(len(a)):
        _check_image(a[i]["image"])
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(len(a)))
    assert any(not torch.equal(a[i]["image"], plain[i]["image"]) for i in range(len(a)))
    first = a[0]["image"]
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["image"])
    # Workers draw the same crops as the main process.
    b.set_epoch(1)
    batch = next(iter(make_loader(b, batch_size=len(b), num_workers=2)))
    assert torch.equal(batch["image"], torch.stack([a[i]["image"] for i in range(len(a))]))


def test_loader_shuffle_is_seeded():
    source = [{"image": torch.zeros(3, 2, 2), "index": i, "name": str(i)} for i in range(12)]
    order = lambda seed: [i for b in make_loader(source, 3, shuffle=True, seed=seed) for i in b["index"].tolist()]  # noqa: E731
    assert order(0) == order(0) and sorted(order(0)) == list(range(len(source)))
    assert order(0) != order(1)


# -- errors ---------------------------------------------------------------------------------------
def _error(spec: str, **kw) -> str:
    with pytest.raises(ModinvError) as info:
        open_source(spec, SIZE, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_specs_give_clear_errors(tmp_path, tiny_coco):
    assert "does not exist" in _error(f"folder:{tmp_path / 'nope'}")
    assert "does not exist" in _error(f"coco:{tmp_path / 'nope'}")
    assert "does not exist" in _error(f"imagenet:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert "no images found" in _error(f"folder:{tmp_path / 'empty'}")
    assert "no class folders" in _error(f"imagenet:{tmp_path / 'empty'}")
    message = _error("flickr:cats")
    assert all(kind in message for kind in ("samples", "folder:", "coco:", "imagenet:"))
    assert "folder:" in _error(str(tmp_path))  # a bare path: suggest folder:
    assert "lacks a path" in _error("coco:")
    assert "chelsea" in _error("samples:dog")
    # COCO: missing annotation file, missing split folder, malformed JSON.
    bad = tmp_path / "badcoco"
    (bad / "val2017").mkdir(parents=True)
    assert "instances_val2017.json" in _error(f"coco:{bad}")
    assert "train2017" in _error(f"coco:{tiny_coco}:train2017")  # annotation file of that split
    (bad / "annotations").mkdir()
    (bad / "annotations" / "instances_val2017.json").write_text("{not json")
    assert "not valid JSON" in _error(f"coco:{bad}")
    (bad / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": []}))
    assert "malformed" in _error(f"coco:{bad}")
    (bad / "annotations" / "instances_x.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert "image folder" in _error(f"coco:{bad}:x")
    assert "augment" in _error(f"coco:{tiny_coco}", augment=True)
    assert "option" in _error("samples", label_map="imagenet")
    with pytest.raises(ModinvError, match="size"):
        open_source("samples", (0, 10))


def test_load_images_for_the_command_line(tmp_path):
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "red.png")
    images, names = load_images([tmp_path / "red.png", "chelsea"], SIZE)
    assert images.shape == (2, 3, *SIZE) and names == ["red", "chelsea"]
    assert torch.allclose(images[0].mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(ModinvError, match="cannot read image"):
        load_images([tmp_path / "bad.jpg"], SIZE)
    with pytest.raises(ModinvError, match="does not exist"):
        load_images([tmp_path / "missing.png"], SIZE)


def test_named_sample_sets_and_a_default_that_leaves_enough_to_train():
    from modinv.data import DEMO_HELD_OUT, DEMO_PHOTOS, KNOWN_SAMPLES
    from modinv.training.data import split_sources

    demo = open_source("samples:demo", SIZE)
    assert len(demo) == 13 and demo.names == list(DEMO_PHOTOS) and not set(DEMO_HELD_OUT) & set(demo.names)
    assert open_source("samples:all", SIZE).names == list(KNOWN_SAMPLES) and len(KNOWN_SAMPLES) == 16
    train, val = split_sources("samples", SIZE)  # the default validation fraction
    assert len(val) == 1 and len(train) >= 7
    with pytest.raises(ModinvError, match="or the sets demo, all"):
        open_source("samples:nosuch", SIZE)
