"""DDP pieces of the training engine: wrapping a component for training, reducing logged numbers."""

from __future__ import annotations

import torch
from torch import nn

from modinv.distributed import DistContext


def wrap_for_training(component: nn.Module, device: torch.device, dist: DistContext, channels_last: bool = True,
                      compile: bool = False) -> nn.Module:
    """The module a training step calls: channels-last (convolutional components on CUDA),
    DDP-wrapped under ``torchrun`` (BatchNorm synchronised on GPUs) and compiled as asked.

    Parameters stay those of ``component``, so optimisers, checkpoints and the chain share them.
    """
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in component.modules())
    if channels_last and device.type == "cuda" and has_conv:
        component.to(memory_format=torch.channels_last)
    module = component
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    if compile:
        module = torch.compile(module)
    return module


def mean_over_processes(values: dict[str, float], dist: DistContext, device: torch.device) -> dict[str, float]:
    """The mean of each value over all processes (unchanged in a single process)."""
    if not dist.enabled:
        return values
    sums = dist.all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64, device=device))
    return {k: float(v) / dist.world_size for k, v in zip(values, sums)}


def replica_checksums(components: dict[str, nn.Module], dist: DistContext, device: torch.device) -> dict[str, list[float]]:
    """Per component, the sum of its weights on every process (rank order): DDP keeps them equal."""
    return {stage: dist.all_gather_floats(sum(float(p.detach().double().sum()) for p in module.parameters()), device)
            for stage, module in components.items()}
