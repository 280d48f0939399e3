"""A Hugging Face Space folder that runs the explorer on chains from the hub.

    export_space("space/", ["hf:user/detr-r50-inverse"])   # app.py, requirements.txt, README.md
    app = build_from_chains(["path/or/hf:id"])               # what the Space's app.py calls

The model is the one each chain's manifest names (name, weights, input size), so the Space needs
nothing but the chain ids. Weights that were a local file where the chain was trained cannot be
found in a Space: the model's published ``pretrained`` weights are used instead, with a note.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from modinv import __version__
from modinv.analysis.common import unique_label
from modinv.errors import ModinvError
from modinv.explore.compute import Explorer
from modinv.fileio import atomic_write_text
from modinv.hub import is_hub_spec, parse_hub_id
from modinv.inverse.chain import InverseChain
from modinv.models.registry import load_model

PORTABLE_WEIGHTS = ("pretrained", "random")

APP_PY = '''"""Hugging Face Space: modinv explore on {chains}."""

import os

from modinv.explore.app import CSS
from modinv.explore.space import build_from_chains

CHAINS = {chain_list!r}


def build(chains=None):
    """The page (a gr.Blocks) for ``chains`` (default: CHAINS, or $MODINV_CHAINS, comma-separated)."""
    env = os.environ.get("MODINV_CHAINS")
    return build_from_chains(chains or (env.split(",") if env else CHAINS))


if __name__ == "__main__":
    build().launch(css=CSS)
'''

README = """---
{metadata}---

# {title}

Reconstructions of a photo from every processing stage of a vision model by the modular inverse chains
{chains}, made with [modinv](https://pypi.org/project/modinv/) (`modinv explore --export-space`).
Pick a sample photo or upload one; recolour it (the six colour filters of the paper, on the whole
image or inside a rectangle) or replace tokens by noise, and compare every stage's reconstruction
of the perturbed input with the unperturbed one.
"""


def chain_label(spec: str, taken: Sequence[str] = ()) -> str:
    """A short label for the chain ``spec``: the hub id, or the folder's last two path parts."""
    label = spec.removeprefix("hf:") if is_hub_spec(spec) else "/".join(Path(spec).parts[-2:]) or spec
    return unique_label(label, dict.fromkeys(taken))


def build_from_chains(specs: Sequence[str], device: str = "cpu"):
    """The explorer page for the chains ``specs`` (hub ids or folders) on the model their
    manifests name; the chains must all be made for that model."""
    if not specs:
        raise ModinvError("name at least one inverse chain")
    first = InverseChain.load(specs[0], map_location="cpu")
    weights = first.layout.get("weights", "pretrained")
    if weights not in PORTABLE_WEIGHTS:
        warnings.warn(f"the chain was trained on the weights file {weights!r}; using the published "
                      "pretrained weights instead", stacklevel=2)
        weights = "pretrained"
    model = load_model(first.model_name, weights=weights, device=device,
                       input_size=tuple(first.layout["input_size"]))
    chains: dict[str, InverseChain] = {}
    for spec in specs:
        chains[chain_label(spec, list(chains))] = InverseChain.load(spec, model, map_location=model.device)
    from modinv.explore.app import build_app

    return build_app(Explorer(model, chains))


def export_space(folder: str | Path, specs: Sequence[str]) -> list[Path]:
    """Write a Space folder (``app.py``, ``requirements.txt``, ``README.md`` with the Space's
    metadata) that explores the hub chains ``specs``; returns the files written."""
    bad = [s for s in specs if not is_hub_spec(s)]
    if not specs or bad:
        raise ModinvError(f"a Space loads its chains from the hub: push {bad[0] if bad else 'the chain'} first "
                          "(modinv push) and pass --inverse hf:user/name")
    repos = [parse_hub_id(s)[0] for s in specs]
    try:
        import gradio
        import yaml
    except ImportError:
        raise ModinvError("exporting a Space needs Gradio: pip install 'modinv[app]'") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"modinv explore: {repos[0].split('/')[-1]}"[:60]
    metadata = {"title": title, "emoji": "🔍", "colorFrom": "indigo", "colorTo": "gray", "sdk": "gradio",
                "sdk_version": gradio.__version__, "app_file": "app.py", "pinned": False, "license": "mit",
                "models": repos, "tags": ["modinv", "feature-inversion"]}
    texts = {
        "app.py": APP_PY.format(chains=", ".join(specs), chain_list=list(specs)),
        "requirements.txt": f"modinv[app]=={__version__}\ngradio=={gradio.__version__}\n",
        "README.md": README.format(metadata=yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True),
                                   title=title, chains=", ".join(f"`{r}`" for r in repos)),
    }
    return [atomic_write_text(folder / name, text) for name, text in texts.items()]
