"""Multi-process training under ``torchrun`` (PyTorch DDP); a no-op in a single process.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_distributed` reads them, starts
the process group (NCCL on GPUs, Gloo on CPUs) and picks this process's device. Everything else
asks the returned :class:`DistContext` whether it is the main process and reduces metrics with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from modinv.errors import ModinvError
from modinv.runtime import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over all processes (unchanged in a single process)."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_gather_floats(self, value: float, device: torch.device) -> list[float]:
        """``value`` from every process, in rank order."""
        if not self.enabled:
            return [value]
        mine = torch.tensor([value], dtype=torch.float64, device=device)
        out = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return [float(t) for t in out]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def init_distributed(device: str | None = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group that torchrun describes (if any) and choose this process's device.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` when CUDA is available (or asked for);
    otherwise the CPU with the Gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, resolve_device(device)
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ModinvError(
                f"LOCAL_RANK {ctx.local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "use --nproc_per_node <= the number of GPUs"
            )
        chosen = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return ctx, chosen


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
