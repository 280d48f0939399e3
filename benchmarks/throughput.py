"""Throughput of the frozen forward pass, the modular training step and each component alone.

    python benchmarks/throughput.py --model vit-b16 --batch 32 --device cuda
    python benchmarks/throughput.py --model detr-r50 --batch 2 --device cpu --steps 3

Prints a table (images/s, ms per batch, peak memory) and writes JSON. Random weights: speed does
not depend on the weights. Peak memory is CUDA's max_memory_allocated per phase on GPUs and the
process's peak resident set so far on CPUs.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import modinv
from modinv.runtime import amp_dtype, resolve_device
from modinv.training.modular import ModularTrainer, TrainConfig


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per call (after warm-up) and peak memory of the phase."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps, peak_memory_mb(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-b16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--input-size", type=int, nargs=2)
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/<model>-<device>.json)")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    options = {"input_size": tuple(args.input_size)} if args.input_size else {}
    model = modinv.load_model(args.model, weights="random", device=device, **options)
    chain = modinv.InverseChain.build(model, arch="default", seed=0)
    config = TrainConfig(steps=1, batch_size=args.batch, amp=args.amp, compile=args.compile,
                         channels_last=not args.no_channels_last)
    images = torch.rand(args.batch, 3, *model.input_size, device=device)
    data = torch.utils.data.TensorDataset(images.cpu())  # the trainer wants a data set; steps are driven here
    trainer = ModularTrainer(model, chain, data, None, "/tmp/modinv-benchmark", config)
    rows = []

    def record(name: str, seconds: float, memory: float) -> None:
        rows.append({"phase": name, "images_per_s": args.batch / seconds, "ms_per_batch": seconds * 1e3,
                     "peak_memory_mb": memory})

    record("frozen forward", *timed(lambda: trainer.frozen_trace(images), device, args.warmup, args.steps))
    record("modular step (all components)", *timed(lambda: trainer.train_step(images), device, args.warmup, args.steps))
    trace = trainer.frozen_trace(images)
    for stage in trainer.stages:
        def one_component(stage: str = stage) -> None:
            optimizer = trainer.optimizers[stage]
            loss = trainer.component_loss(stage, trace)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        record(f"{stage}⁻¹ alone (fwd+bwd+step)", *timed(one_component, device, args.warmup, args.steps))

    base = rows[0]["images_per_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    dtype = amp_dtype(device, args.amp)
    print(f"{args.model}  batch {args.batch}  {device} ({name})  amp {dtype or 'off'}  torch {torch.__version__}")
    print(f"{'phase':<34}{'images/s':>10}{'ms/batch':>11}{'peak MB':>10}{'÷ forward':>11}")
    for r in rows:
        r["ratio_to_forward"] = r["images_per_s"] / base
        print(f"{r['phase']:<34}{r['images_per_s']:>10.2f}{r['ms_per_batch']:>11.1f}{r['peak_memory_mb']:>10.0f}"
              f"{r['ratio_to_forward']:>11.3f}")
    out = Path(args.out or Path(__file__).parent / "results" / f"{args.model}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "batch": args.batch, "device": str(device), "device_name": name,
              "amp": str(dtype) if dtype else "off", "compile": args.compile, "torch": torch.__version__,
              "input_size": list(model.input_size), "rows": rows, "argv": sys.argv[1:]}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
