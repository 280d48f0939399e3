"""Token noise (Fig. 9): 20% of tokens become one noise token at bb (bb_man; then encoded: enc_man+) or enc (enc_man).

``modinv analyze tokens --model detr-r50 --inverse STANDARD_CHAIN LOCAL_BB_CHAIN --data SPEC --out DIR
[--fraction 0.2] [--noise matched|unit] [--token-seed N]`` writes ``DIR/tokens.png`` and
``DIR/tokens.json`` (:class:`modinv.analysis.tokens.TokenNoiseResult` plus ``data``, ``inverse``,
``figure``); each ``--inverse`` chain is one group of rows, labelled by its bb⁻¹ variant. Any model
that declares two token stages on one patch grid runs it (``--token-stages`` picks them).
"""

from __future__ import annotations

import argparse
from typing import Any

from modinv.analysis.token_noise import DEFAULT_FRACTION, NOISE_MODES
from modinv.analysis.tokens import token_noise_analysis, token_noise_figure
from modinv.cli.analyze.common import load_chains, model_and_source, run_record, write_result, wrote
from modinv.cli.common import input_paths, number_in, positive_int, seed_int, writable_dir
from modinv.metrics import format_ci


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fraction", type=number_in(0, 1, low_open=True), default=DEFAULT_FRACTION,
                        help="fraction of spatial tokens replaced (default: 0.2)")
    parser.add_argument("--noise", choices=NOISE_MODES, default="matched",
                        help="matched: uniform with the tokens' per-channel mean and variance (default); unit: U(0, 1)")
    parser.add_argument("--token-seed", type=seed_int, help="seed of the token choice and the noise (default: --seed)")
    parser.add_argument("--figure-images", type=positive_int, default=2, help="images shown in the figure (default: 2)")
    parser.add_argument("--token-stages", nargs=2, metavar=("FIRST", "SECOND"),
                        help="the two token stages that play bb and enc (default: the first two the model declares "
                             "on one patch grid)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = writable_dir(args.out, inputs=input_paths(args))
    model, source = model_and_source(args)
    chains = load_chains(args, model)
    seed = args.seed if args.token_seed is None else args.token_seed
    result = token_noise_analysis(model, chains, source, fraction=args.fraction, noise=args.noise, seed=seed,
                                  batch_size=args.batch, limit=args.limit, amp=args.amp,
                                  figure_images=args.figure_images, stages=args.token_stages)
    payload = write_result(out, "tokens", result, plot=token_noise_figure, extra=run_record(args))
    for label, conds in payload["results"].items():
        print(f"{label} bb⁻¹")
        for cond, r in conds.items():
            print(f"  {cond:<9} MSE vs default inside {_number(r['inside']['mse'])}  "
                  f"outside {_number(r['outside']['mse'])}  locality {format_ci(r['locality'], digits=3)}")
    if payload.get("note"):
        print(f"note: {payload['note']}")
    wrote(out, "tokens")
    return payload


def _number(value: float | None) -> str:
    """An MSE for the terminal; ``n/a`` where it is undefined (null in the JSON)."""
    return "n/a" if value is None else f"{value:.5f}"
