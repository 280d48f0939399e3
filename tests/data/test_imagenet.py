"""modinv.data.imagenet: ImageNet-1k class names and synsets, and the label map a folder resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest

from modinv.data import imagenet_class_names, imagenet_synsets, open_source, resolve_label_map, task_source_options
from modinv.data.synthetic import make_image_folder


@pytest.fixture(scope="module")
def synset_folder(tmp_path_factory):
    """Three ImageNet-1k synset folders (tabby, coffee mug, missile) under ``val/``."""
    return make_image_folder(tmp_path_factory.mktemp("inet"), per_class=1, size=(16, 16), split="val")


def test_class_names_and_synsets_are_the_standard_1000_in_index_order():
    names, synsets = imagenet_class_names(), imagenet_synsets()
    assert isinstance(names, tuple) and len(names) == len(synsets) == 1000
    assert names[0] == "tench" and synsets[0] == "n01440764"
    assert names[281] == "tabby" and synsets[281] == "n02123045"
    assert names[999] == "toilet tissue" and len(set(synsets)) == 1000


def test_auto_label_map_keeps_imagenet_indices_for_synset_folders(synset_folder, tmp_path):
    spec = f"imagenet:{synset_folder}"
    assert resolve_label_map(spec) == "imagenet"
    assert resolve_label_map(f"{spec}:val") == "imagenet"
    assert resolve_label_map(spec, "sorted") == "sorted"  # an explicit choice is kept
    source = open_source(spec, (16, 16), label_map=resolve_label_map(spec))
    assert sorted(set(source.labels)) == [281, 504, 657]
    (tmp_path / "cats").mkdir()
    assert resolve_label_map(f"imagenet:{tmp_path}") == "sorted"  # not every folder is a synset
    assert resolve_label_map(f"imagenet:{tmp_path / 'missing'}") == "sorted"  # the source reports it


def test_task_source_options(synset_folder):
    assert task_source_options("coco:/data/coco:val2017") == {"masks": False}
    assert task_source_options(f" imagenet:{synset_folder} ") == {"label_map": "imagenet"}
    assert task_source_options(f"imagenet:{synset_folder}", "sorted") == {"label_map": "sorted"}
    assert task_source_options("samples") == {}


@pytest.mark.parametrize("others", [["extra"], ["notes", "backup", "tmp", "zzz"]])
def test_synset_folders_mixed_with_others_are_refused_naming_them(synset_folder, tmp_path, others):
    """Was: one stray folder switched every label to sorted positions (top-1 0.0 instead of 1.0)."""
    import shutil

    from modinv.errors import ModinvError

    root = Path(shutil.copytree(synset_folder, tmp_path / "inet"))
    for name in others:
        (root / "val" / name).mkdir()
    with pytest.raises(ModinvError) as info:
        resolve_label_map(f"imagenet:{root}")
    message = str(info.value)
    assert "\n" not in message and f"mixes ImageNet-1k synset folders with {len(others)} folder(s)" in message
    assert repr(sorted(others)[0]) in message and "'sorted'" in message
    assert resolve_label_map(f"imagenet:{root}", "sorted") == "sorted"  # an explicit choice is kept
    with pytest.raises(ModinvError, match="is not an ImageNet-1k synset id"):
        open_source(f"imagenet:{root}", (16, 16), label_map="imagenet")
