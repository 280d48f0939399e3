"""modinv.inverse.convert and ``modinv convert``: the authors' inverse-tvm modules, given the same
weights and input, give the same output as modinv's components (fixtures made once from their code
by tests/fixtures/inverse_tvm/make_fixtures.py), and their checkpoints become chain folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modinv.cli import main
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.inverse.convert import convert, convert_state_dict, read_checkpoint
from modinv.inverse.registry import build_component
from modinv.models.registry import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inverse_tvm"
RECORD = json.loads((FIXTURES / "fixtures.json").read_text())


def fixture(name: str) -> tuple[dict, list[torch.Tensor], torch.Tensor]:
    """(the authors' state dict, the inputs, the authors' output) of one fixture."""
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    inputs = [tensors[f"input.{i}"] for i in range(sum(k.startswith("input.") for k in tensors))]
    return state, inputs, tensors["output"]


def modinv_output(config: dict, state: dict, inputs: list, context: dict) -> torch.Tensor:
    component = build_component(dict(config)).eval()
    component.load_state_dict(convert_state_dict(config, state))
    with torch.no_grad():
        return component(*inputs, context)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def test_the_fixtures_cover_the_required_kinds_and_name_the_authors_commit():
    assert set(RECORD["fixtures"]) >= {"detr_pred_oh", "detr_pred_fd", "detr_enc_1layer", "vit_bb", "swin_bb",
                                       "swin_s1"}
    assert len(RECORD["authors_commit"]) == 40
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) <= 20 * 2**20


@pytest.mark.parametrize("name", sorted(RECORD["fixtures"]))
def test_converted_component_gives_the_authors_output(name):
    entry = RECORD["fixtures"][name]
    state, inputs, expected = fixture(name)
    got = modinv_output(entry["config"], state, inputs, entry["context"])
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= 1e-5, name


def test_the_comparison_tells_the_legacy_swin_stage_from_the_authors():
    # the same weights in a stage whose first block is unshifted (modinv's layout before) differ
    entry = RECORD["fixtures"]["swin_s1"]
    state, inputs, expected = fixture("swin_s1")
    legacy = {**entry["config"], "shift_first": False}
    assert relative_error(modinv_output(legacy, state, inputs, {}), expected) > 1e-3


def test_state_dicts_of_another_kind_or_shape_are_refused():
    state, _, _ = fixture("swin_bb")
    with pytest.raises(ModinvError, match="do not match modinv's vit.bb|no layer"):
        convert_state_dict({"kind": "vit.bb"}, state)
    with pytest.raises(ModinvError, match="needs"):
        convert_state_dict({"kind": "swin.bb", "in_channels": 64}, state)
    with pytest.raises(ModinvError, match="no counterpart"):
        convert_state_dict({"kind": "auto.mlp", "in_dim": 4, "out_dim": 6}, state)


# -- checkpoints -> chain folders ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def swin_b():
    torch.manual_seed(0)
    return load_model("swin-b", weights="random", seed=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The Swin fixtures as the authors' scripts save them: one checkpoint with ``model_states``
    keyed by stage number (train.py), one bare ``state_dict()`` file (model_states/<key>)."""
    root = tmp_path_factory.mktemp("authors")
    bb, s1 = fixture("swin_bb")[0], fixture("swin_s1")[0]
    torch.save({"model_states": {"0": bb}, "optim_states": {}, "best_loss": [0.1], "train_step": 3}, root / "ckpt")
    torch.save(s1, root / "1")
    torch.save(fixture("detr_pred_oh")[0], root / "pred")
    return root


def test_checkpoints_become_a_chain_folder_with_the_authors_outputs(swin_b, checkpoints, tmp_path):
    out = convert(swin_b, [checkpoints / "ckpt", checkpoints / "1"], tmp_path / "chain")
    assert (out / "manifest.json").is_file() and (out / "README.md").is_file()
    chain = InverseChain.load(out, swin_b)
    assert chain.stages == ("bb", "s1")
    assert chain.component_meta["s1"]["training"]["converted_from"]["file"] == "1"
    for stage, name in (("bb", "swin_bb"), ("s1", "swin_s1")):
        _, inputs, expected = fixture(name)
        with torch.no_grad():
            got = chain.component(stage)(*inputs, {})
        assert relative_error(got, expected) <= 1e-5, stage


def test_a_checkpoint_of_another_model_is_refused_and_nothing_written(swin_b, checkpoints, tmp_path):
    with pytest.raises(ModinvError, match="holds no inverse-tvm component of 'swin-b'"):
        convert(swin_b, [checkpoints / "1", checkpoints / "pred"], tmp_path / "chain")
    assert not (tmp_path / "chain").exists()


def test_tampered_and_pickled_objects_are_refused(checkpoints, tmp_path):
    data = bytearray((checkpoints / "1").read_bytes())
    (tmp_path / "cut").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModinvError, match="is not a readable weights-only checkpoint"):
        read_checkpoint(tmp_path / "cut")
    torch.save({"model_states": {"0": {"w": torch.ones(1)}}, "run": Path("x")}, tmp_path / "object")
    with pytest.raises(ModinvError, match="is not a readable weights-only checkpoint"):
        read_checkpoint(tmp_path / "object")
    bad = {k: v.clone() for k, v in fixture("swin_bb")[0].items()}
    bad["up_conv_1.bias"][0] = float("nan")
    torch.save(bad, tmp_path / "nan")
    with pytest.raises(ModinvError, match="non-finite"):
        read_checkpoint(tmp_path / "nan")


def test_cli_converts_and_refuses_in_one_sentence(checkpoints, tmp_path, capsys):
    common = ["convert", "--from", "inverse-tvm", "--model", "swin-b", "--weights", "random"]
    assert main([*common, "--checkpoint", str(checkpoints / "pred"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modinv convert: error: ") and "\n" not in err
    assert not (tmp_path / "bad").exists()
    assert main([*common, "--checkpoint", str(checkpoints / "ckpt"), "--out", str(tmp_path / "ok")]) == 0
    assert "bb: ckpt" in capsys.readouterr().out
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["components"].keys() == {"bb"}
