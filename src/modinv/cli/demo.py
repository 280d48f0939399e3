"""``modinv demo``: train inverse components for a real pretrained network offline and report.

``make demo`` runs ``modinv demo --out outputs/demo``: MobileNetV2 with torchvision's ImageNet
weights (found offline), trained on crops of the 13 freely licensed sample photos that
scikit-image and matplotlib ship, shown and evaluated on three held-out ones. See :mod:`modinv.demo`.
"""

from __future__ import annotations

import argparse

from modinv.cli.common import add_arch_arg, image_side, non_negative_int, positive_float, positive_int, seed_int
from modinv.runtime import AMP_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:
    from modinv.cli.evaluate import add_metric_args
    from modinv.demo import DEFAULT_BATCH, DEFAULT_HELD_OUT, DEFAULT_MINUTES, DEFAULT_WEIGHTS

    p = sub.add_parser(
        "demo",
        help="offline demo: inverse components for pretrained MobileNetV2 on sample photos; figure + report",
        description="Train modular inverse components on the free sample photos of scikit-image and matplotlib within "
        "a time budget, then write reconstructions.png, report.json and report.md (per-stage MSE, PSNR, SSIM and "
        "LPIPS with 95% CIs on held-out photos, the mean-image baseline, the model's labels) and the trained chain "
        "(inverse/) into --out.",
    )
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--minutes", type=positive_float, default=DEFAULT_MINUTES,
                   help=f"training time budget in minutes (default {DEFAULT_MINUTES:g}; loading and evaluation "
                   "add ~30 s)")
    p.add_argument("--model", help="model name (default: the registered family whose pretrained weights load "
                   "offline, MobileNetV2)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="pretrained | random | PATH (default: pretrained)")
    p.add_argument("--steps", type=positive_int, help="stop after this many training steps (reproducible length; the "
                   "time budget still applies)")
    p.add_argument("--held-out", default=",".join(DEFAULT_HELD_OUT),
                   help="sample photos kept out of training, shown and evaluated "
                   f"(default: {','.join(DEFAULT_HELD_OUT)})")
    p.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH,
                   help=f"crops per training step (default {DEFAULT_BATCH})")
    add_arch_arg(p)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of random weights, components, crops (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"), help="override the model's input size")
    p.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                   help="bf16 autocast for training: auto (CUDA / bf16-capable CPUs, default), bf16, off")
    p.add_argument("--no-save-chain", action="store_true", help="do not write the trained chain to OUT/inverse")
    add_metric_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.cli.common import input_paths, writable_dir
    from modinv.demo import run_demo
    from modinv.metrics import DEFAULT_METRICS

    out = writable_dir(args.out, inputs=input_paths(args))
    held = [n.strip() for n in args.held_out.split(",") if n.strip()]
    run_demo(
        out,
        minutes=args.minutes,
        model=args.model,
        weights=args.weights,
        steps=args.steps,
        held_out=held,
        batch_size=args.batch,
        arch=args.arch,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        input_size=tuple(args.input_size) if args.input_size else None,
        save_chain=not args.no_save_chain,
        metrics=args.metrics if args.metrics is not None else DEFAULT_METRICS,
        lpips_weights=args.lpips_weights,
    )
    return 0
