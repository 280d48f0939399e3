"""Per-operator profile (torch.profiler) of one modular training step, per configuration.

    python benchmarks/profile_step.py --model detr-r50 --batch 2 --device cpu --threads 2 --out profile.txt

Builds the trainers of ``throughput.py`` (``plain``, ``default``, ...), runs one untimed step of
each, then profiles one step of each and prints the share of ``aten::copy_`` (casts and reorders)
and the top operators by self CPU time (and by self CUDA time on GPUs). Random weights, random images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import modinv
from modinv.fileio import atomic_write_text
from modinv.runtime import resolve_device
from throughput import (CONFIGS, PROFILE_HEADROOM_MB, as_in_training, build_setup, copy_summary, device_name,
                        heap_headroom, sync)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="detr-r50")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", nargs="+", default=["plain", "default"], choices=list(CONFIGS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--profile-headroom-mb", type=int, default=PROFILE_HEADROOM_MB,
                   help="heap room faulted in before profiling on CPUs (0: none), see throughput.heap_headroom")
    p.add_argument("--out", default=None, help="also write the tables to this text file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = modinv.load_model(args.model, weights="random", device=device)
    images = torch.rand(args.batch, 3, *model.input_size, generator=torch.Generator().manual_seed(0)).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = [f"{args.model} batch {args.batch}, {device} ({device_name(device)}), {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, load average before {os.getloadavg()}"]
    for name in args.configs:
        setup = build_setup(name, model, args.batch)
        step = lambda: setup.trainer.train_step({"image": images})  # noqa: E731
        # as_in_training runs one untimed step first (the warm-up, and compilation), as training would
        with as_in_training(setup, step):
            heap_headroom(args.profile_headroom_mb)  # room for what the profiler's records displace
            with profile(activities=activities) as prof:
                start = time.perf_counter()
                step()
                sync(device)
                seconds = time.perf_counter() - start
        table = prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=48)
        copies = copy_summary(prof.key_averages(), device)
        parts.append(f"== {name} (compute {setup.compute_dtype}): one modular step {seconds:.2f} s "
                     f"(under the profiler), load average {os.getloadavg()}\n"
                     f"aten::copy_ {100 * copies['copy_share']:.1f}% of self time, {copies['copy_calls']} calls "
                     f"(casts {copies['cast_calls']}, reorders {copies['reorder_calls']})\n{table}")
        del setup
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
