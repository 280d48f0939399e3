"""Swin's paper components: exact parameter counts, shapes, patch splitting, training, the chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.inverse.registry import build_component, component_kinds
from modinv.inverse.swin import paper_specs, split_tokens
from modinv.models.registry import load_model

SWIN_B = {"img": (3, 224, 224), "bb": (56, 56, 128), "s1": (56, 56, 128), "s2": (28, 28, 256),
          "s3": (14, 14, 512), "s4": (7, 7, 1024)}
PAPER_COUNTS = {"bb": 16_873, "s1": 397_896, "s2": 1_713_808, "s3": 57_316_896, "s4": 27_302_464}
SMALL = (64, 64)
TINY = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}


@pytest.fixture(scope="module")
def tiny():
    return load_model("swin-b", weights="random", seed=0, input_size=SMALL, **TINY)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts_are_exact():
    specs = paper_specs(SWIN_B, {}, {})
    assert list(specs) == list(PAPER_COUNTS)
    with torch.device("meta"):  # 87 M parameters without allocating or initialising them
        counts = {stage: _count(build_component(spec["config"])) for stage, spec in specs.items()}
    assert counts == PAPER_COUNTS
    assert sum(counts.values()) == 86_747_937
    configs = {stage: spec["config"] for stage, spec in specs.items()}
    assert [configs[s]["num_heads"] for s in ("s1", "s2", "s3", "s4")] == [4, 8, 16, 32]
    assert [configs[s]["depth"] for s in ("s1", "s2", "s3", "s4")] == [2, 2, 18, 2]
    assert [configs[s]["split"] for s in ("s1", "s2", "s3", "s4")] == [False, True, True, True]
    assert {"swin.bb", "swin.stage"} <= set(component_kinds())


def test_stage_selection_and_bad_layouts():
    assert list(paper_specs(SWIN_B, {}, {}, stages=["s2"])) == ["s2"]
    with pytest.raises(ModinvError, match="stages bb, s1"):
        paper_specs({"img": (3, 224, 224), "bb": (56, 56, 128)}, {}, {})
    with pytest.raises(ModinvError, match="patch merging"):
        paper_specs({**SWIN_B, "s3": (14, 14, 384)}, {}, {})
    with pytest.raises(ModinvError, match="variants"):
        paper_specs(SWIN_B, {}, {"bb": "local"})


def test_split_tokens_undoes_timm_patch_merging():
    from timm.models.swin_transformer import PatchMerging

    merge = PatchMerging(dim=6)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()  # leave timm's rearrangement alone
    x = torch.randn(2, 4, 6, 6)
    merged = merge(x)
    assert merged.shape == (2, 2, 3, 24)
    torch.testing.assert_close(split_tokens(merged), x, rtol=0, atol=0)


def test_split_tokens_row_layout_puts_the_row_offset_first():
    # the authors' PatchSplitting: token (h, w)'s channels [i, j, c] go to pixel (2h + i, 2w + j)
    x = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 3, 4, 8)
    y = split_tokens(x, "row")
    assert y.shape == (2, 6, 8, 2)
    blocks = x.reshape(2, 3, 4, 2, 2, 2)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(y[:, i::2, j::2], blocks[:, :, :, i, j], rtol=0, atol=0)
    # timm's layout is the transposed block: a permutation of the Linear's outputs, not the same map
    assert not torch.equal(split_tokens(x, "timm"), y)
    with pytest.raises(ModinvError, match="unknown patch-split layout"):
        split_tokens(x, "diagonal")


def test_inverse_stages_shift_the_first_block_as_the_authors():
    stage = build_component({"kind": "swin.stage", "dim": 16, "resolution": [8, 8], "depth": 3, "num_heads": 2,
                             "window_size": 2, "split": True})
    assert [b.shift_size for b in stage.blocks] == [(1, 1), (0, 0), (1, 1)]
    assert stage.split.layout == "row" and stage.config["init"] == "torch"
    # a config saved before shift_first / split_layout existed: first block unshifted, timm's layout
    from modinv.inverse.registry import upgrade_config

    old = upgrade_config({k: v for k, v in stage.config.items() if k not in ("shift_first", "split_layout", "init")})
    legacy = build_component(old)
    assert [b.shift_size for b in legacy.blocks] == [(0, 0), (1, 1), (0, 0)]
    assert legacy.split.layout == "timm" and old["init"] == "timm"
    assert {k: v.shape for k, v in legacy.state_dict().items()} == {k: v.shape for k, v in stage.state_dict().items()}


def test_full_size_bb_inverse_makes_images():
    bb = build_component(paper_specs(SWIN_B, {}, {})["bb"]["config"]).eval()
    with torch.no_grad():
        y = bb(torch.randn(2, 56, 56, 128))
    assert y.shape == (2, 3, 224, 224) and 0 <= y.min() and y.max() <= 1


def _specs(model):
    with torch.no_grad():
        context = model.trace(torch.zeros(1, 3, *SMALL)).context
    return paper_specs(model.stage_shapes(), context, {})


def test_components_map_each_stage_to_the_one_before(tiny):
    with torch.no_grad():
        trace = tiny.trace(torch.rand(2, 3, *SMALL, generator=torch.Generator().manual_seed(0)))
        for stage, spec in _specs(tiny).items():
            out = build_component(spec["config"]).eval()(trace[stage], trace.context)
            assert out.shape == trace[tiny.previous(stage)].shape, stage


def test_a_few_adam_steps_lower_every_components_loss(tiny, adam_losses):
    images = torch.rand(4, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trace = tiny.trace(images)
    torch.manual_seed(0)
    for stage, spec in _specs(tiny).items():
        component = build_component(spec["config"]).train()
        x, target = trace[stage], trace[tiny.previous(stage)]
        losses = adam_losses(component, x, target, trace.context, lr=tiny.meta.learning_rates[stage])
        assert losses[-1] < losses[0], (stage, losses)


def test_chain_builds_the_paper_components_from_the_models_metadata(tiny):
    chain = InverseChain.build(tiny, arch="paper", seed=0)
    expected = _specs(tiny)
    for stage in tiny.stages:
        assert chain.component(stage).config == build_component(expected[stage]["config"]).config
    with torch.no_grad():
        images = chain.reconstruct(tiny.trace(torch.rand(1, 3, *SMALL)), "s4")
    assert images.shape == (1, 3, *SMALL) and 0 <= images.min() and images.max() <= 1


def test_a_chain_saved_before_the_authors_layout_loads_unchanged(tiny, tmp_path):
    # configs written before shift_first / split_layout / init existed: the same outputs after loading
    import json

    from modinv.fileio import sha256_file

    chain = InverseChain.build(tiny, arch="paper", seed=0, stages=["s2"])
    old = build_component({**chain.components["s2"].config, "shift_first": False, "split_layout": "timm",
                           "init": "timm"}).eval()
    chain.replace("s2", old, meta=chain.component_meta["s2"])
    chain.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "s2.json").read_text())
    for key in ("shift_first", "split_layout", "init"):
        del meta["config"][key]
    (tmp_path / "old" / "s2.json").write_text(json.dumps(meta))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())  # as the old save recorded it
    manifest["components"]["s2"]["config_sha256"] = sha256_file(tmp_path / "old" / "s2.json")
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    loaded = InverseChain.load(tmp_path / "old", tiny)
    x = torch.randn(1, *tiny.stage_shapes()["s2"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.components["s2"](x, {}), old(x, {}), rtol=0, atol=0)
    assert loaded.components["s2"].config["split_layout"] == "timm"
