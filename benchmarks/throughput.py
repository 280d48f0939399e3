"""Throughput, FLOPs and MFU of the modular training step, its frozen forward pass and each
component, in the *plain* configuration and in modinv's default one, side by side.

    python benchmarks/throughput.py --model detr-r50 --batch 2 --device cpu
    python benchmarks/throughput.py --model detr-r50 vit-b16 --batch 2 8 --device cpu --threads 2
    python benchmarks/throughput.py --model detr-r50 --batch 32 --device cuda --configs plain default compile

Configurations (``CONFIGS``): ``plain`` = float32, eager, NCHW, plain (for-loop) Adam, freed CPU
memory handed back to the system (PyTorch's behaviour) — the path measured at parity with the paper
authors' trainer; ``default`` = modinv's own defaults (``TrainConfig()`` and
:func:`modinv.training.optim.make_optimizer`); ``compile`` = the default plus ``torch.compile`` of
every component (compile time recorded); ``no-reuse`` = the default without keeping freed CPU
memory. Repetitions are interleaved (phase by phase: plain, default, plain, default, ...) so that a
shared machine's load hits every configuration alike; the medians are reported. Every timed call
follows one untimed call of the same phase under the same process settings (:func:`as_in_training`),
as every training step but the first follows another.

Per phase and configuration: images/s, ms per batch, FLOPs per image (PyTorch's FLOP counter as
:func:`modinv.analysis.efficiency.flop_counter_mode` sets it up: matrix products, convolutions and
attention, forward + backward, counted once in float32), achieved FLOP/s and MFU against the
matrix-multiply peak of the configuration's compute precision measured in the same run on the
same device (float32 and bf16), peak memory, ``speedup_vs_plain``, and from one more call under
torch.profiler the share of self time in ``aten::copy_`` (dtype casts, layout reorders, bias
broadcasts; ``--no-profile`` skips it) with the calls of copies, casts (``aten::_to_copy``) and
reorders (``aten::clone``). Weights are random (speed does not depend on them). JSON goes to ``benchmarks/results/<model>-<device>.json``.

Peak memory: on CUDA ``max_memory_allocated`` of the phase; on CPU the process's resident set,
sampled every 5 ms while the phase runs (``peak_rss_mb``; both configurations' models live in the
process) and its rise over the start of the phase (``step_rss_mb``: activations, gradients,
workspaces; freed heap is handed back to the system before each phase).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, schedule

import modinv
from modinv.analysis.efficiency import flop_counter_mode
from modinv.fileio import write_json
from modinv.runtime import amp_dtype, cpu_supports_bf16, resolve_device, reuse_freed_memory, reuses_freed_memory
from modinv.training.modular import ModularTrainer, TrainConfig
from modinv.training.objective import Update
from modinv.training.optim import make_optimizer

RESULTS = Path(__file__).parent / "results"
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"amp": "off", "compile": False, "channels_last": False, "reuse_memory": False, "plain_adam": True},
    "default": {},  # TrainConfig's defaults and the engine's optimiser
    "compile": {"compile": True},
    "no-reuse": {"reuse_memory": False},  # the default, freed CPU memory handed back every step (as before it was kept)
}


# -- measuring ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    """The resident set of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def trim_heap() -> None:
    """Hand freed heap memory back to the system, so that the next phase's RSS rise is its own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryWatch:
    """Peak memory while a block runs: CUDA's allocator peak, or the sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.start = device, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "MemoryWatch":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        trim_heap()
        self.start = self.peak = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def matmul_peak(dtype: torch.dtype, device: torch.device, min_seconds: float = 0.25, max_n: int = 8192) -> dict[str, float]:
    """The best FLOP/s of square matrix products in ``dtype``, growing n until one product takes
    ``min_seconds`` (a slow, emulated precision stops early instead of running for minutes)."""
    n, best = 256, 0.0
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        a @ b  # warm-up
        times = []
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / min(times))
        if min(times) >= min_seconds or n >= max_n:
            return {"flops_per_s": best, "largest_n": n}
        n *= 2


# -- the configurations ---------------------------------------------------------------------------
@dataclass
class Setup:
    """One configuration: its trainer and what was measured of it."""

    name: str
    trainer: ModularTrainer
    compute_dtype: str
    times: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


def build_setup(name: str, model: modinv.StagedModel, batch: int, seed: int = 0) -> Setup:
    """A modular trainer for ``model`` in configuration ``name`` (the same initial weights for all)."""
    options = dict(CONFIGS[name])
    plain_adam = options.pop("plain_adam", False)
    chain = modinv.InverseChain.build(model, arch="default", seed=seed)
    config = TrainConfig(steps=1, batch_size=batch, **options)
    data = torch.utils.data.TensorDataset(torch.zeros(1))  # the steps are driven here, not by fit()
    trainer = ModularTrainer(model, chain, data, None, tempfile.mkdtemp(prefix="modinv-benchmark-"), config)
    if plain_adam:
        trainer.optimizers = {s: make_optimizer(chain.components[s], trainer.lrs[s], fused=False) for s in trainer.stages}
    dtype = trainer.amp or torch.float32
    return Setup(name, trainer, str(dtype).removeprefix("torch."))


def phases(setup: Setup, images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The measured calls: the frozen forward, each component alone on a fixed trace (forward,
    backward, clip, Adam: the engine's update), and the whole modular step."""
    trainer = setup.trainer
    objective = trainer.objective
    trace = trainer.frozen_trace(images)
    out: dict[str, Callable[[], object]] = {"frozen forward": lambda: trainer.frozen_trace(images)}
    for stage in trainer.stages:
        def alone(stage: str = stage) -> object:
            # The engine applies an Update (zero_grad, loss, backward, clip, step); here on a fixed trace.
            return trainer._apply(Update(stage, [stage], lambda: objective._update(stage, trace)))
        out[f"{stage}⁻¹ alone"] = alone
    out["modular step"] = lambda: trainer.train_step({"image": images})
    return out


@contextlib.contextmanager
def as_in_training(setup: Setup, call: Callable[[], object]) -> Iterator[None]:
    """Within: the process settings the training loop of ``setup`` runs under (freed CPU memory kept
    for the next step when its configuration says so), after one untimed ``call``: in training, every
    step but the first follows another one, whose freed memory it finds (or not) in the heap."""
    with reuse_freed_memory(setup.trainer.device, setup.trainer.config.reuse_memory):
        call()
        sync(setup.trainer.device)
        yield


def count_flops(calls: dict[str, Callable[[], object]], batch: int) -> dict[str, float]:
    """FLOPs per image of each call (run once under the counter)."""
    flops = {}
    for phase, call in calls.items():
        with flop_counter_mode() as counter:
            call()
        flops[phase] = counter.get_total_flops() / batch
    return flops


COPY_OPS = {"aten::copy_": "copy", "aten::_to_copy": "cast", "aten::clone": "reorder"}


PROFILE_HEADROOM_MB = 1024


def heap_headroom(megabytes: int) -> bool:
    """Within :func:`as_in_training` on a CPU (freed memory stays in the process): touch
    ``megabytes`` of fresh heap and free them, so that the heap holds that much faulted-in room.
    Returns whether it did (not outside the memory block, where large blocks are mapped per call).

    The profiler's own records are small allocations that split the free blocks a step's large
    tensors would reuse; the tensors then take fresh memory from the top of the heap and fault it in
    (a profiled DETR-R50 step faulted 19,000-115,000 pages where the same unprofiled steps fault
    none), and the faults land in whatever writes that memory first, mostly casts: copy_ measured
    9.5-26% of the step. With the room, profiled calls fault about as little as unprofiled ones."""
    if megabytes <= 0 or not reuses_freed_memory():
        return False
    torch.empty(megabytes << 20, dtype=torch.uint8).fill_(0)
    return True


def copy_profile(setup: Setup, call: Callable[[], object], device: torch.device, warmup: int = 3,
                 active: int = 2, headroom_mb: int = PROFILE_HEADROOM_MB) -> dict[str, float | int]:
    """:func:`copy_summary` of ``active`` calls under torch.profiler (:func:`as_in_training`), after
    ``warmup`` calls under it and :func:`heap_headroom` of ``headroom_mb`` (the profiler's records
    would otherwise make the calls fault pages that unprofiled calls do not). ``profiled_page_faults``:
    the minor page faults per active call, to tell a disturbed profile from a clean one;
    ``profile_headroom_mb``: the room given (0 where none was: outside the memory block)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = schedule(wait=0, warmup=warmup, active=active, repeat=1)
    faults = 0
    with as_in_training(setup, call):
        room = heap_headroom(headroom_mb)
        with profile(activities=activities, schedule=steps) as prof:
            for i in range(warmup + active):
                before = page_faults()
                call()
                sync(device)
                prof.step()
                faults += page_faults() - before if i >= warmup else 0
    return {**copy_summary(prof.key_averages(), device), "profiled_page_faults": faults // active,
            "profile_headroom_mb": headroom_mb if room else 0}


def page_faults() -> int:
    """Minor page faults of this process so far (0 where the platform does not count them)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def copy_summary(events: Any, device: torch.device) -> dict[str, float | int]:
    """From a profile's ``key_averages()``: the share of self time spent in ``aten::copy_`` (dtype
    casts, layout reorders, broadcasts into outputs) and the calls of it, of ``aten::_to_copy``
    (casts, ``.to``) and of ``aten::clone`` (reorders, ``.contiguous``). Device time on CUDA."""
    own = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    total = sum(own(e) for e in events)
    out: dict[str, float | int] = {f"{kind}_calls": 0 for kind in COPY_OPS.values()}
    out["copy_share"] = 0.0
    for e in events:
        if e.key in COPY_OPS:
            out[f"{COPY_OPS[e.key]}_calls"] += e.count
        if e.key == "aten::copy_" and total:
            out["copy_share"] = own(e) / total
    return out


def measure_peaks(device: torch.device, say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Matrix-multiply peaks in float32 and bf16 (measured before and after each model: the larger
    counts, as the load of a shared machine varies)."""
    peaks = {str(d).removeprefix("torch."): matmul_peak(d, device) for d in (torch.float32, torch.bfloat16)}
    say("matmul peaks: " + ", ".join(f"{k} {v['flops_per_s'] / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    return peaks


def add_mfu(result: dict[str, Any], peaks: dict[str, dict[str, float]]) -> None:
    """MFU of every row: achieved FLOP/s over the matmul peak of the row's compute dtype."""
    for r in result["rows"]:
        peak = peaks.get(r["compute_dtype"], {}).get("flops_per_s")
        r["mfu"] = r["achieved_flops_per_s"] / peak if peak else None


def measure_model(model_name: str, batch: int, device: torch.device, configs: list[str], warmup: int, steps: int,
                  say: Callable[[str], None], input_size: tuple[int, int] | None = None,
                  profiled: bool = True, headroom_mb: int = PROFILE_HEADROOM_MB) -> dict[str, Any]:
    """Every phase of every configuration, interleaved; the result dictionary for the JSON.
    ``input_size``: (H, W) of the images, None = the model's own; ``profiled``: one more call of
    each phase and configuration under the profiler, after the timed ones (:func:`copy_profile`,
    with ``headroom_mb`` of heap room)."""
    sized = {"input_size": tuple(input_size)} if input_size else {}
    model = modinv.load_model(model_name, weights="random", device=device, **sized)
    images = torch.rand(batch, 3, *model.input_size, generator=torch.Generator().manual_seed(0)).to(device)
    setups = [build_setup(name, model, batch) for name in configs]
    calls = {s.name: phases(s, images) for s in setups}
    names = list(calls[configs[0]])
    compile_seconds: dict[str, float] = {}
    # Counted once, eagerly, before any timing (the counting run is one more warm-up of that setup;
    # every setup gets at least one of its own, so the timed steps all start warm).
    counted = "plain" if "plain" in calls else configs[0]
    say(f"  counting FLOPs ({counted}, eager)")
    flops = count_flops(calls[counted], batch)
    for rep in range(warmup + steps):
        for phase in names:
            for setup in setups:
                sync(device)
                with MemoryWatch(device) as watch, as_in_training(setup, calls[setup.name][phase]):
                    start = time.perf_counter()
                    calls[setup.name][phase]()
                    sync(device)
                    seconds = time.perf_counter() - start
                if rep == 0 and setup.trainer.config.compile and phase.endswith("alone"):
                    compile_seconds[phase] = seconds  # a component's first call compiles it
                if rep >= warmup:
                    setup.times.setdefault(phase, []).append(seconds)
                    old = setup.memory.get(phase, {"peak": 0.0, "rise": 0.0})
                    setup.memory[phase] = {"peak": max(old["peak"], watch.peak),
                                           "rise": max(old["rise"], watch.peak - watch.start)}
                say(f"  rep {rep}{' (warm-up)' if rep < warmup else ''}  {setup.name:<8} {phase:<16} {seconds:8.2f} s")
    copies = {(s.name, phase): copy_profile(s, calls[s.name][phase], device, headroom_mb=headroom_mb) if profiled else {}
              for phase in names for s in setups}
    rows = []
    for setup in setups:
        for phase in names:
            seconds = statistics.median(setup.times[phase])
            achieved = flops[phase] * batch / seconds
            rows.append({"config": setup.name, "phase": phase, "compute_dtype": setup.compute_dtype,
                         "images_per_s": batch / seconds, "ms_per_batch": seconds * 1e3,
                         "seconds": setup.times[phase], "flops_per_image": flops[phase],
                         "achieved_flops_per_s": achieved, "mfu": None,
                         "peak_memory_mb": setup.memory[phase]["peak"],
                         "step_memory_mb": setup.memory[phase]["rise"], "copy_share": None,
                         **copies[setup.name, phase]})
    plain = {r["phase"]: r["images_per_s"] for r in rows if r["config"] == "plain"}
    for r in rows:
        r["speedup_vs_plain"] = r["images_per_s"] / plain[r["phase"]] if plain else None
    speedup = {r["config"]: r["speedup_vs_plain"] for r in rows if r["phase"] == "modular step"}
    return {"model": model_name, "batch": batch, "input_size": list(model.input_size),
            "arch": setups[0].trainer.chain.arch, "configs": {s.name: {**CONFIGS[s.name], "amp_dtype": s.compute_dtype}
                                                              for s in setups},
            "compile_seconds_first_call": compile_seconds or None, "rows": rows,
            "speedup_vs_plain": speedup.get("default"), "speedup_vs_plain_by_config": speedup}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's matrix/vector flags that decide its fast paths (AVX-512, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2", "fma")))


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']}  batch {result['batch']}  ({result['arch']} components)")
    print(f"{'phase':<18}{'config':<9}{'dtype':<10}{'img/s':>8}{'ms/batch':>10}{'GFLOP/img':>11}"
          f"{'GFLOP/s':>9}{'MFU':>7}{'peak MB':>9}{'step MB':>9}{'copy_':>7}{'faults':>8}{'× plain':>9}")
    for r in result["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        ratio = f"{r['speedup_vs_plain']:.2f}" if r["speedup_vs_plain"] is not None else "-"
        copies = f"{100 * r['copy_share']:.1f}%" if r["copy_share"] is not None else "-"
        faults = f"{r['profiled_page_faults'] / 1e3:.0f}k" if r.get("profiled_page_faults") is not None else "-"
        print(f"{r['phase']:<18}{r['config']:<9}{r['compute_dtype']:<10}{r['images_per_s']:>8.3f}"
              f"{r['ms_per_batch']:>10.0f}{r['flops_per_image'] / 1e9:>11.1f}{r['achieved_flops_per_s'] / 1e9:>9.1f}"
              f"{mfu:>7}{r['peak_memory_mb']:>9.0f}{r['step_memory_mb']:>9.0f}{copies:>7}{faults:>8}{ratio:>9}")
    if result["speedup_vs_plain"] is not None:
        print(f"modular step, default vs plain: {result['speedup_vs_plain']:.2f}×")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["detr-r50"])
    p.add_argument("--batch", type=int, nargs="+", default=[2], help="one for all models, or one per model")
    p.add_argument("--device", default="auto")
    p.add_argument("--configs", nargs="+", default=["plain", "default"], choices=list(CONFIGS))
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per phase and setup first (at least 1)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default: each model's own, e.g. 480×640 for DETR-R50)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--no-profile", action="store_true", help="skip the profiled call per phase (copy_ shares)")
    p.add_argument("--profile-headroom-mb", type=int, default=PROFILE_HEADROOM_MB,
                   help="heap room faulted in before profiling on CPUs (0: none), see heap_headroom")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (a cold first call is not a step's speed)")
    if len(args.batch) not in (1, len(args.model)):
        p.error("give one --batch for all models or one per model")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = args.batch * len(args.model) if len(args.batch) == 1 else args.batch

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_flags": cpu_flags() if device.type == "cpu" else None,
           "cpu_native_bf16": cpu_supports_bf16() if device.type == "cpu" else None,
           "default_amp_dtype": str(amp_dtype(device, "auto")), "warmup": args.warmup, "steps": args.steps,
           "argv": sys.argv[1:] if argv is None else argv,
           # variables that change which kernels or allocator run (ONEDNN_MAX_CPU_ISA=AVX2 emulates an AVX2 CPU)
           "kernel_environment": {k: v for k, v in os.environ.items()
                                  if k.startswith(("ONEDNN_", "DNNL_", "ATEN_CPU", "MALLOC_", "OMP_", "MKL_"))
                                  or k in ("LD_PRELOAD", "GLIBC_TUNABLES")}}
    for model_name, batch in zip(args.model, batches):
        load_before = list(os.getloadavg())
        before = measure_peaks(device, say)
        say(f"{model_name} batch {batch}: {' / '.join(args.configs)}, {args.warmup} warm-up + {args.steps} timed")
        result = measure_model(model_name, batch, device, args.configs, args.warmup, args.steps, say, args.size,
                               profiled=not args.no_profile,
                               headroom_mb=args.profile_headroom_mb)
        after = measure_peaks(device, say)
        peaks = {k: max(before[k], after[k], key=lambda v: v["flops_per_s"]) for k in before}
        add_mfu(result, peaks)
        result["environment"] = env | {"matmul_peaks": peaks, "matmul_peaks_before_after": [before, after],
                                       "load_average_before": load_before, "load_average_after": list(os.getloadavg())}
        print_table(result)
        out = Path(args.out_dir) / f"{model_name}-{device.type}.json"
        write_json(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
