"""Chains on the Hugging Face hub without a network: the model card, loading from a hub cache the
test builds, refusing a chain of another model, failing fast offline, and the folder push_to_hub
hands to the upload (intercepted by a fake HfApi)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import torch
from huggingface_hub.repocard import metadata_load
from PIL import Image

import modinv
from modinv import hub
from modinv.inverse import remote
from modinv.cli import main
from modinv.errors import ModinvError
from modinv.fileio import read_json
from modinv.inverse.card import MARKER, is_generated, model_card

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SIZE = (32, 32)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny() -> modinv.StagedModel:
    return modinv.load_model("mobilenet-v2", weights="random", input_size=SIZE)


@pytest.fixture(scope="module")
def tiny_chain(tiny, tmp_path_factory) -> Path:
    """A saved chain in a RUN/best layout, with a run config.json beside it."""
    run = tmp_path_factory.mktemp("run")
    chain = modinv.InverseChain.build(tiny, arch="auto", seed=3)
    metrics = {s: {"val_loss": 0.0125 * (i + 1), "step": 7} for i, s in enumerate(chain.stages)}
    chain.save(run / "best", metrics=metrics, training={"steps": 7, "batch_size": 2, "lr": 0.001, "seed": 5})
    (run / "config.json").write_text('{"model": "mobilenet-v2", "data": "samples", "augment": true}\n')
    return run / "best"


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory) -> Path:
    """A saved chain of another model (same input size)."""
    other = modinv.load_model("timm:resnet18", weights="random", input_size=SIZE)
    return modinv.InverseChain.build(other, arch="auto").save(tmp_path_factory.mktemp("other") / "chain")


def cache_repo(cache: Path, repo_id: str, chain_dir: Path, commit: str = COMMIT) -> Path:
    """Lay ``chain_dir`` out as huggingface_hub caches a downloaded model repository:
    models--user--name/{blobs/<hash>, snapshots/<commit>/<file> -> blob, refs/main}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for i, path in enumerate(sorted(chain_dir.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy2(path, blob)
        (snap / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache under tmp_path, offline. huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE
    into its constants at import, and snapshot_download reads the constants at call time."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip(), message
    return message


# -- the model card ------------------------------------------------------------------------------------

def test_model_card_front_matter_and_content(tiny_chain, tmp_path):
    manifest = read_json(tiny_chain / "manifest.json")
    meta = {s: read_json(tiny_chain / f"{s}.json") for s in manifest["components"]}
    text = model_card(manifest, meta, repo_id="user/tiny", run_config={"data": "samples", "augment": True})
    (tmp_path / "README.md").write_text(text)
    front = metadata_load(tmp_path / "README.md")
    assert front["library_name"] == "modinv" and front["license"] == "mit"
    assert front["tags"] == ["modinv", "feature-inversion", "mobilenet-v2"]
    assert "Inversion" in front["paper"]
    assert is_generated(text) and text.startswith("---\n")
    assert "`mobilenet-v2` with weights `random`" in text and "32×32" in text
    for stage in manifest["components"]:  # stage table: shape, component kind, variant, seed
        shape = "×".join(map(str, manifest["shapes"][stage]))
        assert f"| `{stage}` | {shape} | `auto.upsample` → " in text
    assert "| `s4` | 24×8×8 | `auto.upsample` → `img` | standard | 22,443 | 3 |" in text
    assert "Architecture: `auto`" in text and "1,358,675" in text
    assert "Data: training `samples`; augmented `yes`" in text
    assert "| stage | steps | batch size | lr | seed |" in text and "| `s32` | 7 | 2 | 0.001 | 5 |" in text
    assert "| stage | step | val loss |" in text and "| `s16` | 7 | 0.0375 |" in text
    assert 'modinv.InverseChain.from_pretrained("user/tiny", model)' in text
    # random weights: the model's own seed (0, the manifest's model_seed), not the training seed 5
    assert "input_size=(32, 32), seed=0)" in text
    assert "--input-size 32 32 --seed 0 --inverse hf:user/tiny" in text


def test_model_card_licence_tags_and_missing_information():
    manifest = {"model": "timm:ResNet 18", "weights": "pretrained", "stages": ["img", "f0"],
                "shapes": {"img": [3, 8, 8], "f0": [4, 4, 4]}, "license": "Apache-2.0",
                "components": {"f0": {"kind": "auto.upsample", "parameters": 5}}, "metrics": {}}
    text = model_card(manifest)
    assert "license: \"apache-2.0\"" in text and '- "timm-resnet-18"' in text
    assert "Training data: not recorded" in text and "Training steps: not recorded" in text
    assert "No validation metrics were recorded" in text
    assert 'from_pretrained("USER/NAME", model)' in text and "The model's weights are random" not in text
    assert not is_generated("# my own card\n") and is_generated(MARKER)


# -- loading ---------------------------------------------------------------------------------------------

def test_from_pretrained_reads_the_hub_cache_first(tiny, tiny_chain, hub_cache, monkeypatch):
    snap = cache_repo(hub_cache, "user/tiny", tiny_chain)
    # online, but the cache answers: the network is never asked
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(remote, "host_reachable", lambda *a, **k: pytest.fail("the network was asked"))
    chain = hub.from_pretrained("user/tiny", tiny)
    expected = modinv.InverseChain.load(tiny_chain, tiny)
    assert chain.stages == expected.stages and states_equal(chain, expected)
    assert chain.component_meta["s8"]["metrics"]["val_loss"] == pytest.approx(0.025)
    assert hub.snapshot("hf:user/tiny") == snap
    assert hub.snapshot(f"hf:user/tiny@{COMMIT}") == snap
    assert hub.snapshot("user/tiny", revision=COMMIT) == snap
    assert states_equal(hub.from_pretrained(f"hf:user/tiny@{COMMIT}", tiny), expected)
    assert states_equal(hub.from_pretrained(tiny_chain, tiny), expected)  # a local folder as is
    assert states_equal(hub.from_pretrained(str(tiny_chain), tiny), expected)


def test_chain_of_another_model_is_refused_in_one_sentence(tiny, other_chain, hub_cache):
    cache_repo(hub_cache, "user/other", other_chain)
    with pytest.raises(ModinvError) as exc:
        hub.from_pretrained("hf:user/other", tiny)
    message = one_sentence(exc)
    assert "hf:user/other" in message and "does not fit model 'mobilenet-v2'" in message
    assert "made for model 'timm:resnet18'" in message and str(hub_cache) not in message


def test_offline_unknown_id_fails_fast_in_one_sentence(tiny, hub_cache, network_attempts):
    with pytest.raises(ModinvError) as exc:
        hub.from_pretrained("hf:user/missing", tiny)
    assert network_attempts == []  # offline: answered from the cache alone, no try, retry or wait
    message = one_sentence(exc)
    assert "hf:user/missing" in message and "HF_HUB_OFFLINE" in message and "local folder" in message


def test_unreachable_hub_fails_fast_in_one_sentence(hub_cache, monkeypatch, network_attempts):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    asked = []
    monkeypatch.setattr(remote, "host_reachable", lambda host, *a, **k: asked.append(host) or False)
    with pytest.raises(ModinvError) as exc:
        hub.snapshot("hf:user/missing@v2")
    assert asked == ["huggingface.co"] and network_attempts == []  # one reachability probe, then no download tries
    message = one_sentence(exc)
    assert "hf:user/missing@v2" in message and "not reachable" in message and "local folder" in message


def test_a_mistyped_folder_says_so(hub_cache, tmp_path):
    with pytest.raises(ModinvError) as exc:
        hub.snapshot(str(tmp_path / "no") + "/best")
    assert f"there is no folder '{tmp_path}/no/best'" in one_sentence(exc)
    with pytest.raises(ModinvError) as exc:
        hub.snapshot("runs/best")
    assert "there is no folder 'runs/best'" in one_sentence(exc)


def test_resolve_chain_spec(tiny_chain, hub_cache):
    snap = cache_repo(hub_cache, "user/tiny", tiny_chain)
    assert hub.resolve_chain_spec("hf:user/tiny") == snap
    assert hub.resolve_chain_spec(str(tiny_chain)) == tiny_chain
    assert hub.resolve_chain_spec("not/there") == Path("not/there")  # a folder path: loading checks it
    for bad, why in (("hf:user/bad name", "not a hub id"), ("hf:noowner", "names no owner"),
                     ("hf:a/b/c", "not a hub id")):
        with pytest.raises(ModinvError) as exc:
            hub.resolve_chain_spec(bad)
        assert why in one_sentence(exc)
    with pytest.raises(ModinvError, match="pins revision 'v1'"):
        hub.snapshot("hf:user/tiny@v1", revision="v2")


# -- pushing ---------------------------------------------------------------------------------------------

class FakeApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what the upload folder holds."""

    def __init__(self):
        self.calls, self.files = [], {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        folder = Path(folder_path)
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns or ["*"]):
                self.files[name] = path.read_bytes()


def expected_files(chain_dir: Path) -> set[str]:
    components = read_json(chain_dir / "manifest.json")["components"]
    return {"manifest.json", "README.md"} | {f"{s}{ext}" for s in components for ext in (".json", ".safetensors")}


def test_push_uploads_the_chain_folder_and_its_card(tiny_chain):
    before = sorted(p.name for p in tiny_chain.iterdir())
    api = FakeApi()
    url = hub.push_to_hub(tiny_chain, "hf:user/tiny", private=True, api=api)
    assert url == "https://huggingface.co/user/tiny"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == "user/tiny" and api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"]
    assert api.calls[1][2]["commit_message"] == "Upload inverse chain for mobilenet-v2"
    assert set(api.files) == expected_files(tiny_chain) and len(api.files) == 2 * 4 + 2
    for name, data in api.files.items():  # every chain file byte for byte
        if name != "README.md":
            assert data == (tiny_chain / name).read_bytes(), name
    card = api.files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: modinv\n") and is_generated(card)
    assert 'from_pretrained("user/tiny", model)' in card and "training `samples`" in card  # run config found
    assert sorted(p.name for p in tiny_chain.iterdir()) == before  # the user's folder is not written to


def test_push_keeps_a_card_a_person_wrote(tiny_chain, tmp_path):
    folder = tmp_path / "chain"
    shutil.copytree(tiny_chain, folder)
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# my words\n")
    api = FakeApi()
    hub.push_to_hub(folder, "user/tiny", api=api, commit_message="v2")
    assert api.files["README.md"] == (folder / "README.md").read_bytes()
    assert api.calls[1][2]["commit_message"] == "v2" and api.calls[0][2]["private"] is False


def test_push_a_chain_object(tiny):
    chain = modinv.InverseChain.build(tiny, arch="auto", stages=["s4", "s8"])
    api = FakeApi()
    hub.push_to_hub(chain, "user/two", api=api)
    assert {n for n in api.files if n.endswith(".safetensors")} == {"s4.safetensors", "s8.safetensors"}
    assert {"manifest.json", "s4.json", "s8.json", "README.md"} <= set(api.files)
    assert "| `s16` | 96×2×2 | none in this chain |" in api.files["README.md"].decode()


def test_push_refuses_what_is_no_chain(tmp_path):
    api = FakeApi()
    with pytest.raises(ModinvError) as exc:
        hub.push_to_hub(tmp_path, "user/tiny", api=api)
    assert "manifest.json" in one_sentence(exc) and api.calls == []
    with pytest.raises(ModinvError, match="not a revision"):
        hub.push_to_hub(tmp_path, "user/tiny@main", api=api)


def _copy(tiny_chain: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "chain"
    shutil.copytree(tiny_chain, folder)
    return folder


def test_push_uploads_only_what_the_manifest_lists(tiny_chain, tmp_path):
    """A secret linked into the folder, stray JSON and weights, hidden files: none of them is uploaded."""
    folder = _copy(tiny_chain, tmp_path)
    secret = tmp_path / "passwd"
    secret.write_text('{"root": "x:0:0"}')
    (folder / "secrets.json").symlink_to(secret)
    (folder / "notes.json").write_text('{"private": true}')
    (folder / "extra.safetensors").write_bytes((folder / "s4.safetensors").read_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / "more.json").write_text("{}")
    api = FakeApi()
    hub.push_to_hub(folder, "user/tiny", api=api)
    assert set(api.files) == expected_files(tiny_chain)


@pytest.mark.parametrize("case", ["linked weights", "linked manifest"])
def test_push_never_follows_a_symbolic_link(tiny_chain, tmp_path, case):
    folder = _copy(tiny_chain, tmp_path)
    name = "s4.safetensors" if case == "linked weights" else "manifest.json"
    outside = tmp_path / f"outside-{name}"
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    api = FakeApi()
    with pytest.raises(ModinvError) as exc:
        hub.push_to_hub(folder, "user/tiny", api=api)
    assert "symbolic link" in one_sentence(exc) and api.calls == []


def test_push_of_a_hub_cache_snapshot_follows_its_own_blob_links(tiny_chain, hub_cache):
    snap = cache_repo(hub_cache, "user/tiny", tiny_chain)
    api = FakeApi()
    hub.push_to_hub(snap, "user/copy", api=api)
    assert set(api.files) == expected_files(tiny_chain)


def _tamper_weights(folder: Path) -> None:
    data = bytearray((folder / "s4.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "s4.safetensors").write_bytes(bytes(data))


def _unknown_kind(folder: Path) -> None:
    meta = read_json(folder / "s4.json")
    meta["config"]["kind"] = "no-such-kind"
    (folder / "s4.json").write_text(json.dumps(meta))
    manifest = read_json(folder / "manifest.json")  # its checksum forged to match
    manifest["components"]["s4"]["config_sha256"] = hashlib.sha256((folder / "s4.json").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _missing_file(folder: Path) -> None:
    (folder / "s8.json").unlink()


@pytest.mark.parametrize("damage, words", [(_tamper_weights, "checksum"), (_unknown_kind, "no-such-kind"),
                                           (_missing_file, "missing")])
def test_push_refuses_a_chain_that_does_not_load(tiny_chain, tmp_path, damage, words):
    folder = _copy(tiny_chain, tmp_path)
    damage(folder)
    api = FakeApi()
    with pytest.raises(ModinvError) as exc:
        hub.push_to_hub(folder, "user/tiny", api=api)
    message = one_sentence(exc)
    assert words in message and "not pushing" in message and api.calls == []
    assert "modinv-push-" not in message  # names the user's folder, not the staging copy


# -- the command line ------------------------------------------------------------------------------------

def test_cli_push(tiny_chain, monkeypatch, capsys):
    api = FakeApi()
    monkeypatch.setattr(remote, "_online_api", lambda token: api)
    assert main(["push", str(tiny_chain.parent), "user/tiny", "--private", "--message", "first"]) == 0  # RUN -> RUN/best
    assert "https://huggingface.co/user/tiny" in capsys.readouterr().out
    assert set(api.files) == expected_files(tiny_chain) and api.calls[0][2]["private"] is True
    assert api.calls[1][2]["commit_message"] == "first"


def test_cli_push_offline_is_one_sentence(tiny_chain, hub_cache, capsys):
    assert main(["push", str(tiny_chain), "user/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "HF_HUB_OFFLINE" in err


# -- the chain's own methods and the CLI reach the hub -------------------------------------------------


def test_chain_methods_delegate_to_the_hub(tiny, tiny_chain, hub_cache):
    cache_repo(hub_cache, "user/tiny", tiny_chain)
    chain = modinv.InverseChain.from_pretrained("user/tiny", tiny)
    assert states_equal(chain, modinv.InverseChain.load("hf:user/tiny", tiny))
    api = FakeApi()
    assert chain.push_to_hub("user/copy", api=api) == "https://huggingface.co/user/copy"
    assert set(api.files) == expected_files(tiny_chain)


def test_cli_inverse_takes_a_hub_id(tiny_chain, hub_cache, tmp_path):
    cache_repo(hub_cache, "user/tiny", tiny_chain)
    Image.new("RGB", (40, 30), (200, 40, 10)).save(tmp_path / "photo.png")
    out = tmp_path / "grid.png"
    argv = ["reconstruct", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
            "--device", "cpu", "--inverse", "hf:user/tiny", "--images", str(tmp_path / "photo.png"), "--out", str(out)]
    assert main(argv) == 0 and out.is_file()
