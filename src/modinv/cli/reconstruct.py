"""``modinv reconstruct``: a figure grid, one row per image: the input, then every stage's reconstruction."""

from __future__ import annotations

import argparse

from modinv.cli.common import (INVERSE_HELP, add_model_args, add_report_amp_arg, caption_parts, input_paths,
                               model_for_chains, writable_file)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct images from every stage into a PNG grid")
    add_model_args(p, from_chain=True)
    p.add_argument("--inverse", required=True, help=INVERSE_HELP)
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf, .svg, ...)")
    add_report_amp_arg(p, what="the forward pass and the reconstructions (the figure's title names it when not "
                               "float32)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.analysis.reconstruct import reconstruction_figure
    from modinv.data import load_images
    from modinv.figures import figure_caption
    from modinv.inverse.chain import InverseChain

    from matplotlib.backend_bases import FigureCanvasBase

    formats = tuple(sorted(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes()))
    out = writable_file(args.out, suffixes=formats, inputs=input_paths(args))
    model = model_for_chains(args)
    chain = InverseChain.load(args.inverse, model, map_location=model.device)
    images, names = load_images(args.images, size=tuple(model.input_size))
    with figure_caption(**caption_parts(model, [chain], where=[args.inverse], seed=args.seed), n=len(names)):
        reconstruction_figure(model, chain, images, out, row_titles=names, amp=args.amp)
    print(f"wrote {out}")
    return 0
