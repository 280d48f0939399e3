"""``modinv push``: upload a trained inverse chain (e.g. RUN/best) to the Hugging Face hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload an inverse chain folder to the Hugging Face hub, with a model card")
    p.add_argument("chain", help="saved inverse chain folder (e.g. RUN/best; a RUN folder means its best/)")
    p.add_argument("repo_id", metavar="USER/NAME", help="hub repository to create or update (hf: prefix optional)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="hub token with write access (default: HF_TOKEN or the saved login)")
    p.add_argument("--message", help="commit message (default: 'Upload inverse chain for MODEL')")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.hub import push_to_hub

    folder = Path(args.chain)
    if not (folder / "manifest.json").is_file() and (folder / "best" / "manifest.json").is_file():
        folder = folder / "best"  # a training run's folder: its best chain
    url = push_to_hub(folder, args.repo_id, token=args.token, private=args.private, commit_message=args.message)
    print(f"pushed {folder} to {url}")
    print(f"load it with: modinv.InverseChain.from_pretrained({args.repo_id.removeprefix('hf:')!r}, model)")
    return 0
