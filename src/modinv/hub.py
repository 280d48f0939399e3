"""Trained inverse chains on the Hugging Face hub: push a chain folder, load one by its hub id.

    url = push_to_hub("runs/detr/best", "user/detr-r50-inverse")          # or a chain object
    chain = from_pretrained("user/detr-r50-inverse", model)                 # or "hf:user/name@rev"
    folder = resolve_chain_spec("hf:user/detr-r50-inverse")                 # what --inverse takes

A chain folder is a model repository as it stands (components, manifest and a README model card,
see :mod:`modinv.inverse.card`). Loading by hub id goes through the local Hugging Face cache first
and only then online; offline or with the hub unreachable it fails at once with one sentence
instead of the client's minute of retries. The manifest is checked exactly as for a local folder.

This module wraps :class:`~modinv.inverse.chain.InverseChain` (whose ``from_pretrained`` and
``push_to_hub`` do the same); the transport of folders is :mod:`modinv.inverse.remote`.
"""

from __future__ import annotations

import os
from typing import Any

from modinv.inverse.chain import InverseChain
from modinv.inverse import remote
from modinv.inverse.remote import (
    CARD,
    CHAIN_FILES,
    LOCAL_HINT,
    PREFIX,
    is_hub_spec,
    parse_hub_id,
    resolve_chain_spec,
    snapshot,
)
from modinv.models.base import StagedModel

__all__ = [
    "CARD",
    "CHAIN_FILES",
    "LOCAL_HINT",
    "PREFIX",
    "from_pretrained",
    "is_hub_spec",
    "parse_hub_id",
    "push_to_hub",
    "resolve_chain_spec",
    "snapshot",
]


def from_pretrained(repo_id_or_path: str | os.PathLike, model: StagedModel | None = None,
                    revision: str | None = None, token: str | None = None, **load_kwargs: Any) -> InverseChain:
    """``InverseChain.load`` of a hub id (``"user/name"``, ``"hf:user/name[@revision]"``) or a local
    folder; the manifest is checked against ``model`` exactly as for a local folder."""
    return InverseChain.from_pretrained(repo_id_or_path, model, revision=revision, token=token, **load_kwargs)


def push_to_hub(chain_dir_or_chain: str | os.PathLike | InverseChain, repo_id: str, **kwargs: Any) -> str:
    """Upload a saved chain folder (or a chain object, saved first) with its model card to the hub
    repository ``repo_id``; only the files its manifest lists, after loading them (checksums, known
    kinds); returns the URL (``kwargs``: token, private, commit_message, api; see
    :func:`modinv.inverse.remote.push_to_hub`)."""
    return remote.push_to_hub(chain_dir_or_chain, repo_id, verify=InverseChain.load, **kwargs)
