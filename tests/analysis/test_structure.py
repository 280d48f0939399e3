"""The structure analysis: reconstructions from pred through the FD and the OH pred⁻¹ (Fig. 8)."""

from __future__ import annotations

import json

import pytest
import torch

import modinv
import modinv.cli
from modinv.analysis.structure import draw_boxes, pred_variant, split_fd_oh
from modinv.errors import ModinvError

DETR_SIZE = (32, 64)


@pytest.fixture(scope="module")
def detr():
    return modinv.load_model("detr-r50", weights="random", input_size=DETR_SIZE)


@pytest.fixture(scope="module")
def chains(detr, tmp_path_factory):
    """(FD chain: every stage, local bb⁻¹; OH chain: pred⁻¹ only), saved under a folder."""
    root = tmp_path_factory.mktemp("structure")
    fd = modinv.InverseChain.build(detr, variants={"bb": "local"}, seed=0).eval()
    oh = modinv.InverseChain.build(detr, variants={"pred": "oh"}, stages=["pred"], seed=1).eval()
    fd.save(root / "fd")
    oh.save(root / "oh")
    return fd, oh, root


def test_variants_are_told_apart_from_the_components(chains):
    fd, oh, _ = chains
    assert pred_variant(fd) == "fd" and pred_variant(oh) == "oh"
    assert split_fd_oh([oh, fd]) == (fd, oh)
    with pytest.raises(ModinvError, match="one FD and one OH"):
        split_fd_oh([fd, fd])
    with pytest.raises(ModinvError, match="two inverse chains"):
        split_fd_oh([fd])
    no_pred = modinv.InverseChain({"enc": fd.components["enc"]}, fd.layout, {"enc": fd.component_meta["enc"]})
    with pytest.raises(ModinvError, match="no pred"):
        pred_variant(no_pred)


def test_draw_boxes_outlines_only():
    image = torch.zeros(3, 20, 30)
    out = draw_boxes(image, [[5, 4, 15, 12]], width=1)
    assert out[0, 4, 5:16].eq(1).all() and out[0, 12, 5:16].eq(1).all()
    assert out[0, 4:13, 5].eq(1).all() and out[0, 4:13, 15].eq(1).all()
    assert out[:, 6:11, 7:14].eq(0).all() and out[:, :3].eq(0).all()
    assert image.eq(0).all()  # a copy


def test_structure_cli(detr, chains, tmp_path, monkeypatch, capsys):
    import modinv.cli.analyze as analyze
    import modinv.cli.common as common
    from modinv.data.synthetic import make_tiny_coco

    coco = make_tiny_coco(tmp_path / "coco", n_images=2, size=(24, 40))
    saved = chains[2]
    monkeypatch.setitem(modinv.cli.COMMANDS, "analyze", "analyze")
    monkeypatch.setattr(analyze, "ANALYSES", {"structure": "structure"})  # the other analyses may not exist yet
    real = common.load_model
    monkeypatch.setattr(common, "load_model", lambda name, **k: detr if name == "detr-r50" else real(name, **k))
    out = tmp_path / "out"
    args = ["--weights", "random", "--device", "cpu", "--data", f"coco:{coco}", "--out", str(out), "--amp", "off"]
    rc = modinv.cli.main(["analyze", "structure", "--model", "detr-r50", "--input-size", *map(str, DETR_SIZE),
                          "--inverse", str(saved / "oh"), str(saved / "fd"), "--box-threshold", "0", *args])
    assert rc == 0, capsys.readouterr().err
    assert (out / "structure.png").stat().st_size > 1000
    result = json.loads((out / "structure.json").read_text())
    for key in ("columns", "mse", "fd_vs_oh", "oh_minus_fd", "per_image", "components", "inverse", "n_images"):
        assert key in result
    assert result["columns"] == ["bb", "enc", "dec", "pred_fd", "pred_oh"] and result["n_images"] == 2
    assert result["inverse"] == {"oh": str(saved / "oh"), "fd": str(saved / "fd")}
    assert result["components"]["dec"] == "fd"
    first = result["per_image"][0]
    assert set(first["mse"]) == set(result["columns"]) and first["fd_vs_oh_mse"] >= 0
    assert first["oh_minus_fd_mse"] == pytest.approx(first["mse"]["pred_oh"] - first["mse"]["pred_fd"])
    assert len(first["detections"]) == 100  # threshold 0: every query
    # two FD chains, and a model without pred
    rc = modinv.cli.main(["analyze", "structure", "--model", "detr-r50", "--input-size", *map(str, DETR_SIZE),
                          "--inverse", str(saved / "fd"), str(saved / "fd"), *args])
    assert rc == 2 and "one FD and one OH" in capsys.readouterr().err
    rc = modinv.cli.main(["analyze", "structure", "--model", "mobilenet-v2", "--input-size", "32", "32",
                          "--inverse", str(saved / "fd"), str(saved / "oh"), *args])
    assert rc == 2 and "has no 'pred' stage" in capsys.readouterr().err
