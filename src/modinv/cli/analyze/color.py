"""Color perturbations inside COCO object masks, their reconstructions per stage and task robustness (Figs. 6, 7).

``modinv analyze color --model M --inverse CHAIN --data coco:ROOT --out DIR [--categories cat bus 18
...] [--robustness [--robustness-data SPEC]] [--compare OTHER/color.json ...]`` writes ``color.png``
(Fig. 6: original, perturbed input and reconstructions from every stage, one example per row, the
filters taken in turn; the pairwise plot when there are no examples), ``color_pairwise.png``
(Fig. 7 left), with ``--robustness`` ``color_robustness.png`` (Fig. 7 right), and ``color.json``
(:class:`modinv.analysis.color.ColorResult` plus ``inverse``, ``data``, ``compare``, ``figure``,
``figures``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

from modinv.analysis.common import unique_label
from modinv.analysis.color import check_classification_source, color_analysis, color_robustness, task_of
from modinv.analysis.color_figures import color_figure, pairwise_figure, robustness_figure
from modinv.analysis.color_filters import FILTERS
from modinv.cli.analyze.common import read_compare_file, run_record, single_chain_inputs, write_result
from modinv.cli.common import non_negative_int, number_in
from modinv.cli.eval_task import add_label_map_arg
from modinv.data import open_source
from modinv.data.sources import task_source_options
from modinv.errors import ModinvError
from modinv.metrics import format_ci


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--categories", nargs="+", metavar="CAT",
                        help="COCO category names or ids whose masks get the hue filters (default: all present)")
    parser.add_argument("--filters", nargs="+", choices=FILTERS, default=list(FILTERS), metavar="FILTER",
                        help=f"filters to compare, at least 2 of: {', '.join(FILTERS)} (default: all six)")
    parser.add_argument("--examples", type=non_negative_int, default=6, help="example rows of color.png (default: 6)")
    parser.add_argument("--min-area", type=number_in(0, 1, high_open=True), default=0.0,
                        help="skip object masks smaller than this fraction of the image (default: 0)")
    parser.add_argument("--robustness", action="store_true",
                        help="also measure the task metric (detectors: COCO box AP; classifiers: top-1) without a "
                             "filter and under full-image recoloring with each filter (on at most --limit images)")
    parser.add_argument("--robustness-data", metavar="SPEC",
                        help="image source for --robustness (default: --data; a classifier needs e.g. imagenet:ROOT)")
    add_label_map_arg(parser)
    parser.add_argument("--compare", nargs="+", default=[], metavar="FILE.json",
                        help="color.json files of other runs (e.g. another model) to plot side by side")
    parser.add_argument("--label", help="legend label of this run (default: the model name)")


def load_compare(files: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{label: the parts of a color.json the figures need}`` for each ``--compare`` file."""
    out: dict[str, dict[str, Any]] = {}
    for file in files:
        data = read_compare_file(file)
        if not isinstance(data, Mapping) or not isinstance(data.get("pairwise_mse"), Mapping):
            raise ModinvError(f"{str(file)!r} is not a color.json of `modinv analyze color` (no 'pairwise_mse')")
        label = unique_label(str(data.get("label") or data.get("model") or Path(file).stem), out)
        out[label] = {k: data.get(k) for k in ("label", "model", "weights", "pairwise_mse", "robustness", "n_units")}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    compare = load_compare(args.compare)
    out, model, chain, source = single_chain_inputs(args, "color")
    rsource = None
    if args.robustness:  # open and check it before the long part
        spec = args.robustness_data or args.data
        options = task_source_options(spec, args.label_map)  # ImageNet-1k indices for synset folders
        rsource = source if spec == args.data else open_source(spec, size=tuple(model.input_size), **options)
        if task_of(model) == "classification":
            check_classification_source(model, rsource)
    result = color_analysis(model, chain, source, categories=args.categories, filters=args.filters,
                            batch_size=args.batch, limit=args.limit, min_area=args.min_area,
                            n_examples=args.examples, amp=args.amp)
    result.label = args.label or model.name
    if rsource is not None:
        result.robustness = color_robustness(model, rsource, filters=args.filters, batch_size=args.batch,
                                             limit=args.limit, amp=args.amp)
        result.robustness.data = spec
        result.robustness.label_map = options.get("label_map")
    compare = {k: v for k, v in compare.items() if k != result.label}
    figures = {"examples": "color.png",
               "pairwise": pairwise_figure(result, out / "color_pairwise.png", compare).name}
    if result.robustness is not None or any(v.get("robustness") for v in compare.values()):
        figures["robustness"] = robustness_figure(result, out / "color_robustness.png", compare).name
    payload = write_result(out, "color", result, plot=color_figure,
                           extra=run_record(args) | {"compare": compare, "figures": figures})
    print(f"{result.label}: average pairwise MSE of {len(result.filters)} filters over {result.n_units} units "
          f"(images × categories) from {result.n_images} images")
    for key, summary in payload["pairwise_mse"].items():
        print(f"  {key:<8} {format_ci(summary, digits=5)}")
    if payload["robustness"]:
        rob = payload["robustness"]
        print(f"  {rob['metric']}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}"
                                                  for k, v in rob["scores"].items()))
    print(f"wrote {', '.join(str(out / f) for f in dict.fromkeys(figures.values()))} and {out / 'color.json'}")
    return payload
