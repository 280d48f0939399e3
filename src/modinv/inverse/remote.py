"""Moving inverse-chain folders to and from the Hugging Face hub: the transport under
:mod:`modinv.hub` and ``InverseChain.from_pretrained`` / ``push_to_hub``.

    folder = snapshot("hf:user/detr-r50-inverse")                           # a local folder
    url = push_to_hub("runs/detr/best", "user/detr-r50-inverse")          # or a chain object

A chain folder is a model repository as it stands (components, manifest and a README model card,
see :mod:`modinv.inverse.card`). Loading by hub id goes through the local Hugging Face cache first
and only then online; offline or with the hub unreachable it fails at once with one sentence
instead of the client's minute of retries. This module knows folders, not chains: a chain object
is pushed through its ``save``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from modinv.errors import ModinvError, brief
from modinv.fileio import atomic_write_text, os_error_sentence, read_json
from modinv.inverse.card import is_generated, model_card
from modinv.inverse.storage import MANIFEST, read_manifest, stage_file
from modinv.models.weights import guarded_download, host_reachable

PREFIX = "hf:"
CARD = "README.md"
RUN_CONFIG = "config.json"  # written next to best/ by the training runs; holds the data sources
CHAIN_FILES = ["*.safetensors", "*.json", CARD]  # what a chain repository holds
LOCAL_HINT = "pass the chain's local folder instead (e.g. RUN/best)"


# -- names ---------------------------------------------------------------------------------------------

def is_hub_spec(spec: Any) -> bool:
    """Whether ``spec`` names a chain on the hub (``"hf:user/name[@revision]"``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_hub_id(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``"hf:user/name[@revision]"`` or ``"user/name"``, validated."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = spec[len(PREFIX):] if is_hub_spec(spec) else spec
    if "@" in repo_id:
        repo_id, _, pinned = repo_id.partition("@")
        if revision is not None and revision != pinned:
            raise ModinvError(f"{spec!r} pins revision {pinned!r}, but revision {revision!r} was asked for")
        revision = pinned or None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModinvError(f"{spec!r} is not a hub id; write it as hf:user/name or hf:user/name@revision") from None
    if "/" not in repo_id:
        raise ModinvError(f"{spec!r} names no owner; write it as hf:user/name (the owner is a user or an organisation)")
    return repo_id, revision


def hub_label(repo_id: str, revision: str | None) -> str:
    """``"hf:user/name[@revision]"``: how messages name a chain on the hub."""
    return f"{PREFIX}{repo_id}" + (f"@{revision}" if revision else "")


# -- loading -------------------------------------------------------------------------------------------

def snapshot(repo_id_or_path: str | os.PathLike, revision: str | None = None, *, token: str | None = None) -> Path:
    """A local folder holding the chain: a local folder as is, a hub id through the local cache
    first, then downloaded; offline or unreachable, one sentence saying how to pass a local folder."""
    if is_local(repo_id_or_path):
        return Path(repo_id_or_path)
    import huggingface_hub.constants as hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        repo_id, revision = parse_hub_id(str(repo_id_or_path), revision)
    except ModinvError:
        if is_hub_spec(repo_id_or_path):
            raise
        raise ModinvError(f"there is no folder {str(repo_id_or_path)!r}, and it is no hub id (hf:user/name)") from None
    label = hub_label(repo_id, revision)
    if not is_hub_spec(repo_id_or_path):  # a mistyped folder must not read as a hub problem only
        label = f"{label} (there is no folder {str(repo_id_or_path)!r})"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHAIN_FILES, local_files_only=True))
    except LocalEntryNotFoundError:  # not cached, or cached incompletely: fetch it
        pass
    where = f"the local Hugging Face cache ({hub.HF_HUB_CACHE})"
    if hub.HF_HUB_OFFLINE:
        raise ModinvError(f"the inverse chain {label} is not in {where} and HF_HUB_OFFLINE is set; "
                          f"download it where the hub is reachable, or {LOCAL_HINT}")
    host = urlsplit(hub.ENDPOINT)
    if not host_reachable(host.hostname or "", host.port or (80 if host.scheme == "http" else 443)):
        raise ModinvError(f"the inverse chain {label} is not in {where} and {host.hostname} is not reachable; "
                          f"{LOCAL_HINT}")
    with guarded_download(f"the inverse chain {label}", LOCAL_HINT):
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHAIN_FILES, token=token))
        except RevisionNotFoundError:
            raise ModinvError(f"the hub repository {repo_id!r} has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            raise ModinvError(f"no inverse chain {label} on the hub: the id is wrong, or the repository is private "
                              "or gated (log in with `hf auth login` or pass a token)") from None


def resolve_chain_spec(spec: str | os.PathLike) -> Path:
    """The folder an ``--inverse`` value names: ``"hf:user/name[@revision]"`` (fetched through the
    cache) or a folder path (returned as is; loading checks it)."""
    return snapshot(spec) if is_hub_spec(spec) else Path(spec)


def is_local(spec: Any) -> bool:
    """A path object, or a string naming an existing folder (``hf:`` ids never are)."""
    return not is_hub_spec(spec) and (isinstance(spec, os.PathLike) or os.path.isdir(str(spec)))


class Saveable(Protocol):
    """What :func:`push_to_hub` needs of a chain object: saving itself to a folder."""

    def save(self, path: str | os.PathLike) -> Path: ...


# -- pushing -------------------------------------------------------------------------------------------

def push_to_hub(chain_dir_or_chain: "str | os.PathLike | Saveable", repo_id: str, *,
                verify: Callable[[Path], Any], token: str | None = None, private: bool = False,
                commit_message: str | None = None, api: Any = None) -> str:
    """Upload a saved chain folder (or a chain object, saved first) to the hub repository
    ``repo_id`` (created if needed) with its model card; returns the repository's URL.

    The upload holds exactly the files the manifest lists (components and manifest) and README.md:
    the folder's own README when a person wrote it, else a card generated from the manifest
    (naming ``repo_id``). ``verify(folder)`` loads the staged copies (checksums, known kinds) and
    raises :class:`ModinvError` for a chain that does not load: what is uploaded is what was checked.
    ``api``: a ``huggingface_hub.HfApi`` (default: a new one with ``token``).
    """
    repo_id, revision = parse_hub_id(repo_id)
    if revision:
        raise ModinvError(f"push to a repository, not a revision: drop '@{revision}' from the hub id")
    with tempfile.TemporaryDirectory(prefix="modinv-push-") as tmp:
        if isinstance(chain_dir_or_chain, (str, os.PathLike)):
            source = Path(chain_dir_or_chain)
        else:
            source = chain_dir_or_chain.save(Path(tmp) / "saved")
        upload, manifest = _stage_upload(source, Path(tmp) / "upload", repo_id, verify)
        if api is None:
            api = _online_api(token)
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(upload), token=token, allow_patterns=CHAIN_FILES,
                              delete_patterns=CHAIN_FILES[:2],  # components the manifest no longer lists
                              commit_message=commit_message or f"Upload inverse chain for {manifest.get('model')}")
        except ModinvError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client's many error types: one sentence each
            raise ModinvError(_push_error(exc, repo_id)) from None
    return str(url)


def _online_api(token: str | None) -> Any:
    import huggingface_hub.constants as hub
    from huggingface_hub import HfApi

    from modinv import __version__

    if hub.HF_HUB_OFFLINE:
        raise ModinvError("cannot push while HF_HUB_OFFLINE is set; unset it where the hub is reachable")
    host = urlsplit(hub.ENDPOINT).hostname or ""
    if not host_reachable(host):
        raise ModinvError(f"cannot push: {host} is not reachable")
    return HfApi(token=token, library_name="modinv", library_version=__version__)


def _push_error(exc: Exception, repo_id: str) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"not allowed to write to the hub repository {repo_id!r}: log in with `hf auth login` or pass a "
                "token with write access (--token)")
    return f"could not push to the hub repository {repo_id!r} ({brief(exc)})"


def _stage_upload(source: Path, upload: Path, repo_id: str,
                  verify: Callable[[Path], Any]) -> tuple[Path, dict[str, Any]]:
    """A folder holding copies of exactly the files the chain's manifest lists, and its model card,
    checked with ``verify`` (loading the copies): nothing else of the user's folder is uploaded, a
    symbolic link is never followed out of the chain, and the user's folder (or a read-only hub
    snapshot) is never written to."""
    manifest = read_manifest(source)  # a folder that is no saved chain fails here, with one sentence
    upload.mkdir(parents=True)
    listed = [source / MANIFEST] + [stage_file(source, s, ext) for s in manifest.get("components", {})
                                    for ext in (".json", ".safetensors")]
    for path in listed:
        _copy_own(path, upload / path.name, source)
    try:
        verify(upload)
    except ModinvError as exc:
        raise ModinvError(f"not pushing {str(source)!r}: {str(exc).replace(str(upload), str(source))}") from None
    own = source / CARD
    if own.is_file() and not is_generated(own.read_text(encoding="utf-8", errors="replace")):
        _copy_own(own, upload / CARD, source)
    else:
        meta = {s: read_json(upload / f"{s}.json", "component file") for s in manifest.get("components", {})}
        card = model_card(manifest, meta, repo_id=repo_id, run_config=_run_config(source, manifest))
        atomic_write_text(upload / CARD, card)
    return upload, manifest


def _run_config(source: Path, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training run's config.json next to RUN/best, when it belongs to the same model."""
    path = source.resolve().parent / RUN_CONFIG
    try:
        config = read_json(path, "run config") if path.is_file() else None
    except ModinvError:
        return None
    return config if isinstance(config, dict) and config.get("model") == manifest.get("model") else None


def _copy_own(path: Path, target: Path, source: Path) -> None:
    """Copy ``path``, a file of the chain folder ``source``, to ``target``; a symbolic link only when
    it is a hub cache snapshot's link to its own blob (``<repo>/snapshots/<commit>/f -> <repo>/blobs/h``)."""
    if not path.is_file():
        raise ModinvError(f"not pushing {str(source)!r}: {str(path)!r}, which its manifest lists, is missing")
    if path.is_symlink():
        blobs = source.absolute().parent.parent / "blobs"
        if path.resolve().parent != blobs.resolve():
            raise ModinvError(f"not pushing {str(source)!r}: {str(path)!r} is a symbolic link (to "
                              f"{str(path.resolve())!r}); push uploads only the chain's own files, so replace "
                              "the link by a copy of the file")
    try:
        shutil.copyfile(path, target)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path, "read")) from None
