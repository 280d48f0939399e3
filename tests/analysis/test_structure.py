"""The structure analysis: reconstructions from pred through the FD and the OH pred⁻¹ (Fig. 8)."""

from __future__ import annotations

import json

import pytest
import torch

import modinv
from modinv.analysis.structure import draw_boxes, pred_variant, split_fd_oh, structure_analysis
from modinv.data import open_source
from modinv.errors import ModinvError
from modinv.metrics import per_image_mse


@pytest.fixture(scope="module")
def fd_oh(detr, chains, tmp_path_factory):
    """(FD chain: the slim chain of every stage; OH chain: pred⁻¹ only, saved; the OH folder)."""
    fd = modinv.InverseChain.load(chains["detr"], detr)
    oh = modinv.InverseChain.build(detr, arch="paper", variants={"pred": "oh"}, stages=["pred"], seed=1).eval()
    return fd, oh, oh.save(tmp_path_factory.mktemp("structure") / "oh")


def _by_hand(model, fd, oh, images) -> dict[str, torch.Tensor]:
    """The reconstructions from pred through FD's and OH's pred⁻¹, both continued through FD's own
    dec⁻¹, enc⁻¹, bb⁻¹ (applied one by one; the chains are in eval mode)."""
    with torch.no_grad():
        trace = model.trace(images)
        out = {}
        for column, chain in (("pred_fd", fd), ("pred_oh", oh)):
            x = chain.components["pred"](trace["pred"], trace.context)
            for stage in ("dec", "enc", "bb"):
                x = fd.components[stage](x, trace.context)
            out[column] = x.float()
    return out


def test_fd_and_oh_share_the_lower_components_and_differ_only_in_the_input_of_pred_inverse(detr, chains, coco):
    fd = modinv.InverseChain.load(chains["detr"], detr)
    # OH: FD's pred⁻¹ weights, fed the one-hot arg-max instead of the softmax
    oh = modinv.InverseChain.build(detr, arch="paper", variants={"pred": "oh"}, stages=["pred"], seed=1).eval()
    oh.components["pred"].load_state_dict(fd.components["pred"].state_dict())
    source = open_source(f"coco:{coco}", size=detr.input_size)
    images = torch.stack([source[i]["image"] for i in range(2)])
    result = structure_analysis(detr, [oh, fd], source, batch_size=1, progress=False)
    assert result.components == {"bb": "fd", "enc": "fd", "dec": "fd", "pred": "fd and oh"}
    hand = _by_hand(detr, fd, oh, images)
    with torch.no_grad():  # OH's pred⁻¹ is FD's MLP on [one-hot(arg-max), box]
        x_pred = detr.trace(images)["pred"]
        logits, box = x_pred[..., :-4], x_pred[..., -4:]
        one_hot = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        torch.testing.assert_close(oh.components["pred"](x_pred, {}),
                                   fd.components["pred"].net(torch.cat([one_hot, box], -1)))
    mse = {c: per_image_mse(hand[c], images) for c in hand}
    between = per_image_mse(hand["pred_fd"], hand["pred_oh"])
    assert (between > 0).all()  # the softmax and the one-hot input do give different images
    for i, row in enumerate(result.per_image):
        assert row["mse"]["pred_fd"] == pytest.approx(float(mse["pred_fd"][i]), rel=1e-5)
        assert row["mse"]["pred_oh"] == pytest.approx(float(mse["pred_oh"][i]), rel=1e-5)
        assert row["fd_vs_oh_mse"] == pytest.approx(float(between[i]), rel=1e-5)
    assert result.fd_vs_oh["mse"] == pytest.approx(float(between.mean()), rel=1e-5)
    # the other columns are FD's chain from its own stage
    with torch.no_grad():
        trace = detr.trace(images)
        for stage in ("bb", "enc", "dec"):
            expected = per_image_mse(fd.reconstruct(trace, stage), images)
            assert [r["mse"][stage] for r in result.per_image] == pytest.approx(expected.tolist(), rel=1e-5)


def test_variants_are_told_apart_from_the_components(fd_oh):
    fd, oh, _ = fd_oh
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


def test_structure_cli(detr, chains, fd_oh, coco, main, tmp_path, capsys):
    fd, oh = chains["detr"], fd_oh[2]
    size = [str(v) for v in detr.input_size]
    out = tmp_path / "out"
    args = ["--weights", "random", "--device", "cpu", "--data", f"coco:{coco}", "--out", str(out), "--amp", "off"]
    rc = main("structure", "--model", "detr-r50", "--input-size", *size,
              "--inverse", str(oh), str(fd), "--box-threshold", "0", *args)
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "pred_oh  MSE " in printed and "(95% CI [" in printed
    assert (out / "structure.png").stat().st_size > 1000
    result = json.loads((out / "structure.json").read_text())
    for key in ("columns", "mse", "fd_vs_oh", "oh_minus_fd", "per_image", "components", "inverse", "n_images"):
        assert key in result
    assert next(iter(result)) == "analysis" and result["figure"] == "structure.png" and "figure_data" not in result
    assert result["columns"] == ["bb", "enc", "dec", "pred_fd", "pred_oh"] and result["n_images"] == 2
    assert result["inverse"] == {"oh": str(oh), "fd": str(fd)}
    assert result["components"]["dec"] == "fd"
    first = result["per_image"][0]
    assert set(first["mse"]) == set(result["columns"]) and result["precision"] == "float32"
    hand = _by_hand(detr, fd_oh[0], fd_oh[1], open_source(f"coco:{coco}", size=detr.input_size)[0]["image"][None])
    assert first["fd_vs_oh_mse"] == pytest.approx(float(per_image_mse(hand["pred_fd"], hand["pred_oh"])[0]), rel=1e-5)
    assert first["fd_vs_oh_mse"] > 0
    assert first["oh_minus_fd_mse"] == pytest.approx(first["mse"]["pred_oh"] - first["mse"]["pred_fd"])
    assert len(first["detections"]) == 100  # threshold 0: every query
    # two FD chains, and a model the chains were not made for
    rc = main("structure", "--model", "detr-r50", "--input-size", *size, "--inverse", str(fd), str(fd), *args)
    assert rc == 2 and "one FD and one OH" in capsys.readouterr().err
    rc = main("structure", "--model", "mobilenet-v2", "--input-size", "32", "32",
              "--inverse", str(fd), str(oh), *args)
    assert rc == 2 and "--model mobilenet-v2 does not match the chain in" in capsys.readouterr().err
