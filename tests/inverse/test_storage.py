"""The saved chain folder (modinv.inverse.storage): files, round trips, checksums of the component
JSON and of the manifest, refusing chains of other models, mixing components, devices, old saves."""

from __future__ import annotations

import copy
import errno
import json
import shutil
import warnings

import pytest
import torch
from inverse_fakes import FakeDetr, TinyConv, frozen, images, n_params
from torch import nn

import modinv
import modinv.inverse.storage as storage
from modinv.errors import ModinvError
from modinv.fileio import atomic_write, sha256_file
from modinv.inverse import InverseChain, build_component, load_component, read_manifest


@pytest.fixture(scope="module")
def saved(fake_detr, tmp_path_factory):
    """A DETR chain (local bb⁻¹) saved with metrics, and another one trained "with seed 1"."""
    root = tmp_path_factory.mktemp("chains")
    chains = {}
    for seed in (0, 1):
        chain = InverseChain.build(fake_detr, seed=seed, variants={"bb": "local"})
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():  # off the seeded init: a load that rebuilt from the seed instead would differ
            for tensor in chain.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(0.01 * torch.randn(tensor.shape, generator=g))
        chain.save(root / f"s{seed}", metrics={"enc": {"val_mse": 0.5 + seed}}, training={"steps": 10 * (seed + 1)})
        chains[seed] = chain
    return root, chains


def test_save_writes_one_pair_of_files_per_component_and_a_manifest(saved):
    root, _ = saved
    files = sorted(p.name for p in (root / "s0").iterdir())
    assert files == sorted(["manifest.json", "README.md"] + [f"{s}.{e}" for s in ("bb", "enc", "dec", "pred")
                                                   for e in ("json", "safetensors")])
    manifest = json.loads((root / "s0" / "manifest.json").read_text())
    card = (root / "s0" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: modinv" in card and "fake-detr" in card
    assert manifest["model"] == "fake-detr" and manifest["weights"] == "random"
    assert manifest["stages"] == ["img", "bb", "enc", "dec", "pred"]
    assert manifest["arch"] == "paper" and manifest["modinv_version"] == modinv.__version__
    assert manifest["seeds"] == {"bb": 0, "enc": 0, "dec": 0, "pred": 0}
    assert manifest["metrics"]["enc"] == {"val_mse": 0.5}
    assert manifest["full_path_parameters"]["total"] > manifest["trainable_parameters"]["total"]
    meta = json.loads((root / "s0" / "enc.json").read_text())
    assert meta["config"]["kind"] == "detr.enc" and meta["seed"] == 0 and meta["variant"] == "standard"
    assert meta["training"] == {"steps": 10} and meta["metrics"] == {"val_mse": 0.5}
    for stage in ("bb", "enc", "dec", "pred"):  # both checksums are the file's
        digest = sha256_file(root / "s0" / f"{stage}.safetensors")
        assert manifest["components"][stage]["sha256"] == digest
        assert json.loads((root / "s0" / f"{stage}.json").read_text())["sha256"] == digest
    assert json.loads((root / "s0" / "dec.json").read_text())["config"]["final_norm"] is False
    assert not list((root / "s0").glob(".*tmp*"))  # no temporary files left behind


def test_load_round_trips_bit_exactly(saved, fake_detr):
    root, chains = saved
    original = copy.deepcopy(chains[0]).eval()
    loaded = InverseChain.load(root / "s0", fake_detr, map_location="cpu")
    assert not loaded.training
    a, b = original.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {s: c.config for s, c in loaded.components.items()} == {s: c.config for s, c in original.components.items()}
    trace = fake_detr.trace(images(fake_detr, b=2, seed=5))
    with torch.no_grad():
        for stage in fake_detr.stages:
            assert torch.equal(original.reconstruct(trace, stage), loaded.reconstruct(trace, stage))
    assert loaded.component_meta["enc"]["metrics"] == {"val_mse": 0.5}
    # saving the loaded chain again gives the same weights
    loaded.save(root / "again")
    for stage in fake_detr.stages:
        assert (root / "again" / f"{stage}.safetensors").read_bytes() == (root / "s0" / f"{stage}.safetensors").read_bytes()


def test_load_places_the_chain_on_the_models_device(saved, monkeypatch):
    root, _ = saved
    model = frozen(FakeDetr())
    model.stage_shapes()  # measured on the CPU; the device below is only what the model reports
    monkeypatch.setattr(FakeDetr, "device", property(lambda self: torch.device("meta")))
    def devices(chain: InverseChain) -> set[str]:
        return {t.device.type for t in chain.state_dict().values()}

    assert devices(InverseChain.load(root / "s0", model)) == {"meta"}
    assert devices(InverseChain.load(root / "s0", model, map_location="cpu")) == {"cpu"}
    assert devices(InverseChain.load(root / "s0")) == {"cpu"}  # no model


def test_load_refuses_a_chain_of_another_model_or_layout(saved, tinyconv):
    root, _ = saved
    with pytest.raises(ModinvError, match="made for model 'fake-detr', not 'tiny-conv'"):
        InverseChain.load(root / "s0", tinyconv)
    other_layout = frozen(FakeDetr())
    other_layout.stages = ("bb", "enc", "dec")
    with pytest.raises(ModinvError, match="stage layout"):
        InverseChain.load(root / "s0", other_layout)
    other_size = frozen(FakeDetr(input_size=(96, 96)))
    with pytest.raises(ModinvError, match="another input size"):
        InverseChain.load(root / "s0", other_size)
    with pytest.raises(ModinvError, match="not a saved inverse chain"):
        InverseChain.load(root, other_size)


def test_load_warns_about_other_weights(saved, fake_detr):
    root, _ = saved
    model = copy.deepcopy(fake_detr)
    model.weights = "pretrained"
    with pytest.warns(UserWarning, match="weights"):
        InverseChain.load(root / "s0", model)


def test_truncated_or_corrupt_weights_are_refused(saved, fake_detr, tmp_path):
    root, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(root / "s0", broken)
    data = (broken / "enc.safetensors").read_bytes()
    (broken / "enc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModinvError, match="truncated"):
        InverseChain.load(broken, fake_detr)
    # a chain of format 1 without checksums (one warning): the safetensors reader itself notices
    make_format_1(broken)
    with pytest.warns(UserWarning, match="has no checksums"), pytest.raises(ModinvError, match="corrupt or truncated"):
        InverseChain.load(broken, fake_detr)
    (broken / "enc.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(ModinvError, match="corrupt or truncated"):
        InverseChain.load(broken, fake_detr)


def make_format_1(folder) -> None:
    """Turn a saved chain into one an older modinv wrote: format 1, no checksums anywhere."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    for stage, entry in manifest["components"].items():
        entry.pop("sha256"), entry.pop("config_sha256")
        meta = json.loads((folder / f"{stage}.json").read_text())
        del meta["sha256"]
        (folder / f"{stage}.json").write_text(json.dumps(meta))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_checksums_are_verified(saved, fake_detr, tmp_path):
    root, _ = saved
    swapped = tmp_path / "swapped"
    shutil.copytree(root / "s0", swapped)
    weights = swapped / "enc.safetensors"
    expected = (f"weights file '{weights}' does not match the checksum in manifest.json: it is truncated, corrupt "
                "or was replaced; save the chain again")
    # a valid weights file of another chain, its <stage>.json checksum forged to match: the manifest's is not
    shutil.copyfile(root / "s1" / "enc.safetensors", weights)
    meta = json.loads((swapped / "enc.json").read_text())
    meta["sha256"] = sha256_file(weights)
    (swapped / "enc.json").write_text(json.dumps(meta))
    manifest = json.loads((swapped / "manifest.json").read_text())
    manifest["components"]["enc"]["config_sha256"] = sha256_file(swapped / "enc.json")  # forged too
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModinvError) as info:
        InverseChain.load(swapped, fake_detr)
    assert str(info.value) == expected
    with pytest.raises(ModinvError, match="checksum in manifest.json"):
        load_component(swapped, "enc")  # the manifest is read when not given
    with pytest.raises(ModinvError, match="checksum in manifest.json"):
        InverseChain.load(root / "s0", fake_detr).replace("enc", swapped)
    # files intact, the manifest's entry edited
    edited = tmp_path / "edited"
    shutil.copytree(root / "s0", edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["components"]["dec"]["sha256"] = "0" * 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModinvError, match=f"^weights file '{edited / 'dec.safetensors'}' does not match the "
                                          "checksum in manifest.json"):
        InverseChain.load(edited, fake_detr)
    manifest["components"]["dec"] = "dec.safetensors"
    (edited / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModinvError, match="is malformed: the entries of \\['dec'\\] under 'components'"):
        read_manifest(edited)


def test_chain_saved_with_decoder_final_norm_still_loads(fake_detr, tmp_path):
    # chains saved before dec⁻¹ lost its final LayerNorm have no "final_norm" in their config
    chain = InverseChain.build(fake_detr, stages=["dec"])
    old_dec = build_component({**chain.components["dec"].config, "final_norm": True})
    chain.replace("dec", old_dec, meta=chain.component_meta["dec"])
    chain.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "dec.json").read_text())
    del meta["config"]["final_norm"]
    (tmp_path / "old" / "dec.json").write_text(json.dumps(meta))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())  # format 1: no JSON checksums
    manifest["format_version"] = 1
    del manifest["components"]["dec"]["config_sha256"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    loaded = InverseChain.load(tmp_path / "old", fake_detr)
    assert n_params(loaded.components["dec"]) == 9_498_624
    assert loaded.components["dec"].config["final_norm"] is True
    for k, v in old_dec.state_dict().items():
        assert torch.equal(loaded.components["dec"].state_dict()[k], v)


def test_interrupted_save_keeps_the_previous_chain(tinyconv, tmp_path, monkeypatch):
    chain = InverseChain.build(tinyconv, arch="auto", stages=["s2", "s4"])
    chain.save(tmp_path / "best")
    before = {p.name: p.read_bytes() for p in (tmp_path / "best").iterdir()}
    with torch.no_grad():
        for p in chain.parameters():
            p.add_(1.0)
    write_json = storage.write_json

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_at_the_manifest(path, obj):  # the last file: every component is written by then
        return atomic_write(path, no_space) if path.name.startswith(".manifest.json") else write_json(path, obj)

    monkeypatch.setattr(storage, "write_json", full_disk_at_the_manifest)
    with pytest.raises(ModinvError, match=f"^cannot write '{tmp_path / 'best'}/.*': the disk is full"):
        chain.save(tmp_path / "best")
    assert {p.name: p.read_bytes() for p in (tmp_path / "best").iterdir()} == before  # no temporaries either
    monkeypatch.undo()
    InverseChain.load(tmp_path / "best", tinyconv)


def test_mixing_components_trained_with_other_seeds(saved, fake_detr, tmp_path):
    root, chains = saved
    chain = InverseChain.load(root / "s0", fake_detr)
    chain.replace("enc", root / "s1")
    assert chain.seeds() == {"bb": 0, "enc": 1, "dec": 0, "pred": 0}
    assert chain.component_meta["enc"]["metrics"] == {"val_mse": 1.5}
    assert chain.component_meta["enc"]["training"] == {"steps": 20}
    for k, v in chains[1].components["enc"].state_dict().items():
        assert torch.equal(chain.components["enc"].state_dict()[k], v)
    chain.save(tmp_path / "mixed")
    manifest = json.loads((tmp_path / "mixed" / "manifest.json").read_text())
    assert manifest["seeds"] == {"bb": 0, "enc": 1, "dec": 0, "pred": 0}
    # the same through load(..., components=...) and through replace(stage, other_chain)
    again = InverseChain.load(root / "s0", fake_detr, components={"enc": root / "s1"})
    assert again.seeds() == chain.seeds()
    third = InverseChain.load(root / "s0", fake_detr).replace("dec", chains[1])
    assert third.seeds()["dec"] == 1
    trace = fake_detr.trace(images(fake_detr, b=1))
    with torch.no_grad():
        assert chain.eval().reconstruct(trace, "pred").shape == (1, 3, 64, 96)


def test_replace_refuses_components_of_another_layout(saved, tinyconv, fake_detr, tmp_path):
    root, _ = saved
    chain = InverseChain.load(root / "s0", fake_detr)
    conv = InverseChain.build(tinyconv, arch="auto", stages=["s2"])
    conv.save(tmp_path / "conv")
    with pytest.raises(ModinvError, match="made for model 'tiny-conv'"):
        chain.replace("enc", tmp_path / "conv")
    with pytest.raises(ModinvError, match="no config"):
        chain.replace("enc", nn.Linear(256, 256))
    wrong = build_component({"kind": "detr.pred"})
    with pytest.raises(ModinvError, match="this chain needs"):
        chain.replace("enc", wrong, meta={"in_shape": [100, 96], "out_shape": [100, 256]})


def test_analytic_component_saves_its_buffers(fake_vit, tmp_path):
    chain = InverseChain.build(fake_vit, variants={"bb": "analytic"}, stages=["bb"]).eval()
    chain.save(tmp_path / "vit")
    loaded = InverseChain.load(tmp_path / "vit", fake_vit)
    trace = fake_vit.trace(images(fake_vit, b=1))
    with torch.no_grad():
        assert torch.equal(chain.reconstruct(trace, "bb"), loaded.reconstruct(trace, "bb"))


def test_stage_names_with_dots(tmp_path):
    model = frozen(TinyConv())
    model.stages = ("layer.1", "layer.2")
    model.step = lambda stage, x, ctx, m=model: TinyConv.step(m, {"layer.1": "s2", "layer.2": "s4"}[stage], x, ctx)
    chain = InverseChain.build(model, arch="auto")
    assert list(chain.components) == ["layer.1", "layer.2"]
    chain.save(tmp_path / "dots")
    loaded = InverseChain.load(tmp_path / "dots", model)
    assert loaded.reconstruct(model.trace(images(model, b=1)), "layer.2").shape == (1, 3, 30, 44)


def test_saved_files_get_the_mode_the_umask_gives(fake_detr, tmp_path):
    """Was 0600 for every file: colleagues on a shared machine could not read a chain."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        folder = InverseChain.build(fake_detr, seed=0, variants={"bb": "local"}).save(tmp_path / "chain")
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes



def test_checksums_are_required(saved, fake_detr, tmp_path):
    """Was: a checksum was skipped when its field was missing, so deleting it hid any damage."""
    root, _ = saved
    for key in ("sha256", "config_sha256"):
        folder = tmp_path / key
        shutil.copytree(root / "s0", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["components"]["enc"][key]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModinvError, match=r"lack their checksums \('sha256', 'config_sha256'\)"):
            InverseChain.load(folder, fake_detr)


def test_an_edited_component_config_is_refused(saved, fake_detr, tmp_path):
    root, _ = saved
    folder = tmp_path / "edited"
    shutil.copytree(root / "s0", folder)
    meta = json.loads((folder / "enc.json").read_text())
    meta["variant"] = "something else"
    (folder / "enc.json").write_text(json.dumps(meta))
    with pytest.raises(ModinvError) as info:
        InverseChain.load(folder, fake_detr)
    assert str(info.value).startswith(f"component file '{folder / 'enc.json'}' does not match the checksum in "
                                      "manifest.json")


def test_an_old_chain_without_checksums_loads_with_one_warning(saved, fake_detr, tmp_path):
    root, chains = saved
    folder = tmp_path / "old"
    shutil.copytree(root / "s0", folder)
    make_format_1(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = InverseChain.load(folder, fake_detr)
        InverseChain.load(folder, fake_detr)
    assert [str(w.message) for w in caught if "checksums" in str(w.message)] == [
        f"the inverse chain in '{folder}' has no checksums (an older modinv wrote it), so damage to its files "
        "cannot be detected; save it again to add them"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), chains[0].state_dict().values()))


def test_a_component_with_a_nan_weight_is_refused_saying_why(fake_detr, tmp_path):
    """Was: every stage evaluated to "n/a ... n=0" with exit 0."""
    chain = InverseChain.build(fake_detr, seed=0, variants={"bb": "local"})
    with torch.no_grad():
        next(chain.components["enc"].parameters()).view(-1)[0] = float("nan")
    folder = chain.save(tmp_path / "nan")
    with pytest.raises(ModinvError) as info:
        InverseChain.load(folder, fake_detr)
    message = str(info.value)
    assert message.startswith(f"weights file '{folder / 'enc.safetensors'}' holds NaN or infinite values (in ")
    assert "diverged" in message and "\n" not in message


def test_a_manifest_nested_too_deeply_is_one_sentence(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModinvError, match="its JSON is nested too deeply"):
        read_manifest(folder)
