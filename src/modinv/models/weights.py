"""Weight loading shared by the adapters: seeded random init, local files, guarded downloads."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

from modinv.errors import ModinvError, WeightsUnavailableError, brief
from modinv.fileio import read_json, sha256_file
from modinv.runtime import check_seed

DOWNLOAD_TIMEOUT_S = 20.0
HUB_HOST = "huggingface.co"
T = TypeVar("T")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. model construction) under ``seed`` without touching the caller's RNG."""
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_path(weights: str | os.PathLike) -> bool:
    """True when ``weights`` names a local file or directory rather than 'pretrained'/'random'."""
    return isinstance(weights, os.PathLike) or str(weights) not in ("pretrained", "random")


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or a PyTorch file loaded with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise ModinvError(f"weights file {str(path)!r} does not exist")
    _check_recorded_checksum(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, foreign format, pickled objects
        raise ModinvError(f"cannot read weights file {str(path)!r} ({describe_load_error(exc)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModinvError(f"weights file {str(path)!r} holds no state dict of tensors")
    return state


_UNCHECKED_WARNED: set[str] = set()


def _check_recorded_checksum(path: Path) -> None:
    """Forward weights written next to a chain (a fine-tuned model's) must match the checksum its
    manifest records (``"files"``); written before checksums were recorded: one warning."""
    manifest_file = path.parent / "manifest.json"
    if not manifest_file.is_file():
        return
    try:
        manifest = read_json(manifest_file, "manifest")
    except ModinvError:
        return
    if not isinstance(manifest, dict) or manifest.get("forward_weights") != path.name:
        return
    files = manifest.get("files")
    expected = files.get(path.name) if isinstance(files, dict) else None
    if not expected:
        if str(path.resolve()) not in _UNCHECKED_WARNED:
            _UNCHECKED_WARNED.add(str(path.resolve()))
            warnings.warn(f"weights file {str(path)!r} has no checksum in {str(manifest_file)!r} (an older modinv "
                          "wrote it), so damage to it cannot be detected", UserWarning, stacklevel=4)
        return
    if sha256_file(path) != expected:
        raise ModinvError(f"weights file {str(path)!r} does not match the checksum in {str(manifest_file)!r}: it is "
                          "truncated, corrupt or was replaced")


def describe_load_error(exc: BaseException) -> str:
    """Why a weights file could not be read, in a few words on one line (torch's and safetensors'
    own messages run over several lines, with links and terminal colour codes)."""
    if type(exc).__name__ == "UnpicklingError":  # from torch.load(weights_only=True)
        if "Unsupported global" in str(exc):
            return ("it holds pickled Python objects besides tensors, which modinv refuses to load because "
                    "unpickling them could run code; save a plain state dict of tensors or a .safetensors file")
        return "not a PyTorch state dict: the file is corrupt or of another format"
    return brief(exc)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, turning key or shape mismatches into one clear sentence."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModinvError(f"weights in {source!r} do not fit this model: {detail}") from None


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def guarded_download(what: str, how_to_supply: str, host: str | None = None) -> Iterator[None]:
    """Fetch pretrained weights with a network time-out; any failure becomes one clear sentence.

    With ``host`` given, an unreachable host fails at once instead of after a client's retries
    (the Hugging Face client retries for about a minute before giving up).
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        if host is not None and not host_reachable(host):
            raise ConnectionError(f"{host} is not reachable")
        yield
    except ModinvError:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not obtain pretrained weights for {what} ({type(exc).__name__}); {how_to_supply}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def from_hub(load: Callable[[], T], what: str, how_to_supply: str) -> T:
    """Run ``load`` (e.g. a timm ``pretrained=True`` build) from the local Hugging Face cache if it
    can, else with the network, failing fast with one clear sentence when the hub is unreachable."""
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True  # the client reads this flag at call time: try the cache alone first
    try:
        return load()
    except Exception:
        pass
    finally:
        hub.HF_HUB_OFFLINE = offline
    with guarded_download(what, how_to_supply, host=None if offline else HUB_HOST):
        if offline:
            raise ConnectionError("HF_HUB_OFFLINE is set and the weights are not cached")
        return load()
