"""``modinv explore``: a model and its inverse chains in the browser (Gradio, ``pip install 'modinv[app]'``).

    modinv explore --model mobilenet-v2 --inverse outputs/demo/inverse        # http://127.0.0.1:7860
    modinv explore --export-space space/ --inverse hf:user/name               # a Hugging Face Space folder
"""

from __future__ import annotations

import argparse

from modinv.cli.common import add_model_args
from modinv.errors import ModinvError

DEFAULT_PORT = 7860


def port_number(text: str) -> int:
    """``--port``: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="explore a model and its inverse chains in the browser (needs modinv[app])",
                       description="Start a local web page: pick or upload a photo, see its reconstruction from "
                       "every stage with MSE/PSNR/SSIM, recolour it or replace tokens by noise and compare. Binds "
                       "127.0.0.1 unless --host says otherwise; Ctrl-C stops it.")
    add_model_args(p)
    next(a for a in p._actions if a.dest == "model").required = False  # not with --export-space
    p.add_argument("--inverse", nargs="+", required=True, metavar="CHAIN",
                   help="inverse chain folders or hub ids (hf:user/name), shown side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--export-space", metavar="DIR",
                   help="write a Hugging Face Space folder for the hub chains of --inverse instead of serving")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.export_space:
        from modinv.cli.common import writable_dir
        from modinv.explore.space import export_space

        for path in export_space(writable_dir(args.export_space), args.inverse):
            print(f"wrote {path}")
        return 0
    if not args.model:
        raise ModinvError("--model is required (except with --export-space)")
    from modinv.cli.common import model_from_args
    from modinv.explore.app import build_app, serve
    from modinv.explore.compute import Explorer
    from modinv.explore.space import chain_label
    from modinv.inverse.chain import InverseChain

    model = model_from_args(args)
    chains: dict[str, InverseChain] = {}
    for spec in args.inverse:
        chains[chain_label(spec, list(chains))] = InverseChain.load(spec, model, map_location=model.device)
    app = build_app(Explorer(model, chains))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"modinv explore: listening on {args.host}: other machines that can reach it can open the page")
    serve(app, host=args.host, port=args.port or None,
          announce=lambda url: print(f"modinv explore: {model.name} on {url} (Ctrl-C stops)", flush=True))
    print("modinv explore: stopped")
    return 0
