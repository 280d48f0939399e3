"""Preparing a component for training (memory format, DDP, compilation) and reducing logged numbers."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from modinv.distributed import DistContext
from modinv.errors import ModinvError
from modinv.runtime import conv_memory_format

# The layout hook wrap_for_training put on each convolution, so that a second wrap replaces it.
_LAYOUT_HOOKS: "weakref.WeakKeyDictionary[nn.Module, RemovableHandle]" = weakref.WeakKeyDictionary()


class _TrainingLayout:
    """Forward pre-hook of a 2-D convolution: while gradients are on, its input is laid out in
    ``memory_format`` (a token grid laid out from B×N×D is channels-last by its strides and would
    otherwise pull every following layer, and its weight gradients, into that layout)."""

    def __init__(self, memory_format: torch.memory_format) -> None:
        self.memory_format = memory_format

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not torch.is_grad_enabled() or not isinstance(x, Tensor) or x.ndim != 4:
            return None  # forward-only passes (validation, evaluation) keep their layout
        return (x.contiguous(memory_format=self.memory_format), *args[1:])


def set_conv_layout(component: nn.Module, memory_format: torch.memory_format | None) -> int:
    """Lay the weights and, in training, the inputs of every 2-D convolution of ``component`` out in
    ``memory_format``; None removes what an earlier call set. Returns the convolutions touched."""
    convs = [m for m in component.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.weight.ndim == 4]
    for conv in convs:
        old = _LAYOUT_HOOKS.pop(conv, None)
        if old is not None:
            old.remove()
        if memory_format is not None:
            conv.to(memory_format=memory_format)
            _LAYOUT_HOOKS[conv] = conv.register_forward_pre_hook(_TrainingLayout(memory_format))
    return len(convs)


def wrap_for_training(component: nn.Module, device: torch.device, dist: DistContext, channels_last: bool = True,
                      compile: bool = False, amp: torch.dtype | None = None) -> nn.Module:
    """The module a training step calls: its convolutions in the fastest memory format for the
    device and precision (``channels_last``: channels-last on CUDA and for bf16 on CPUs with native
    bf16, NCHW for float32 on CPUs: :func:`modinv.runtime.conv_memory_format`; False: layouts as
    they come), DDP-wrapped under ``torchrun`` (BatchNorm synchronised on GPUs) and compiled as asked.
    ``amp``: the run's autocast dtype (None = float32).

    Parameters stay those of ``component``, so optimisers, checkpoints and the chain share them.
    """
    set_conv_layout(component, conv_memory_format(device, amp) if channels_last else None)
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
    """Per component, the sum of its weights on every process (rank order); DDP keeps them equal,
    and one sentence says which differ otherwise."""
    sums = {stage: dist.all_gather_floats(sum(float(p.detach().double().sum()) for p in module.parameters()), device)
            for stage, module in components.items()}
    differing = [s for s, v in sums.items() if max(v) - min(v) > 1e-6 * max(1.0, abs(v[0]))]
    if differing:
        raise ModinvError(f"component weights differ between processes for {', '.join(differing)}")
    return sums
