"""Device and precision choices shared by training, evaluation and analyses, and how a run ends
on SIGTERM (what schedulers such as Slurm and Kubernetes send before they kill a job).

Every choice is detected on the machine at hand (CUDA's bf16 support, the CPU's native bf16
kernels), never assumed: a CPU without native bf16 (AVX2 only, e.g.) computes bf16 matrix products
hundreds of times slower than float32, so "auto" keeps it in float32.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import ContextManager

import torch

from modinv.errors import ModinvError, Terminated

AMP_CHOICES = ("auto", "bf16", "off")


# Seeds are whole numbers 0 .. 2**32 - 1, the range every generator modinv seeds (torch, numpy) takes.
MAX_SEED = 2**32 - 1


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int, or one sentence when it is not a whole number in 0 .. :data:`MAX_SEED`."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        try:
            if isinstance(seed, bool):
                raise TypeError
            seed = operator.index(seed)  # numpy integers
        except TypeError:
            raise ModinvError(f"{what} must be a whole number from 0 to {MAX_SEED}, got {seed!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise ModinvError(f"{what} must be a whole number from 0 to {MAX_SEED}, got {seed}")
    return int(seed)


def resolve_device(device: str | torch.device | None = None, allow_meta: bool = False) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; a named device must exist in this build
    (``allow_meta``: also the meta device, for building models that only report their shapes)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModinvError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModinvError(f"device {str(device)!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "meta" and allow_meta:
        return device
    if device.type not in ("cpu", "cuda"):
        backend = getattr(torch, device.type, None) if device.type in ("mps", "xpu") else None
        if backend is None or not backend.is_available():
            raise ModinvError(f"device {str(device)!r} is not available in this build of torch; use cpu or cuda")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 kernels (AVX512-BF16 / AMX), detected rather than assumed."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full float32).

    "auto": bf16 on CUDA cards that support it and on CPUs with native bf16; "bf16": always;
    "off": never.
    """
    if amp not in AMP_CHOICES:
        raise ModinvError(f"unknown amp setting {amp!r}; choose from {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def conv_memory_format(device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """The memory format in which the convolutions of trained components run fastest.

    Channels-last on CUDA and for bf16 autocast on CPUs with native bf16 (oneDNN's NHWC kernels);
    contiguous NCHW for float32 on CPUs and everywhere else: there, oneDNN's NHWC weight-gradient
    kernels were 3-5× slower than its NCHW ones (measured on an AVX2 CPU; benchmarks/README.md).
    ``dtype`` is the autocast dtype of the run (None = float32).
    """
    if device.type == "cuda":
        return torch.channels_last
    if device.type == "cpu" and dtype == torch.bfloat16 and cpu_supports_bf16():
        return torch.channels_last
    return torch.contiguous_format


# -- freed CPU memory ------------------------------------------------------------------------------

# glibc's mallopt parameters (malloc.h) and the defaults restored afterwards.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 2**31 - 1  # trim threshold (mallopt takes an int): keep up to 2 GiB of free heap top


class _Heap:
    depth = 0  # nested reuse_freed_memory blocks (the settings are process-wide)


_HEAP = _Heap()


def _tunable_glibc() -> ctypes.CDLL | None:
    """glibc, when this process allocates through it and nobody chose its malloc settings (an
    environment variable of glibc's, or another allocator preloaded): otherwise None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
    except (ValueError, OSError):
        return None
    chosen = [k for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
              if os.environ.get(k)]
    if chosen or "malloc" in os.environ.get("GLIBC_TUNABLES", "") or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def reuses_freed_memory() -> bool:
    """Whether a :func:`reuse_freed_memory` block is in effect now."""
    return _HEAP.depth > 0


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device, enabled: bool = True) -> Iterator[bool]:
    """Within (a training loop on a CPU): memory PyTorch frees stays in the process and serves the
    next allocation, instead of going back to the system; yields whether that is in effect.

    glibc serves every large block (activations, weight casts, gradients) with a fresh ``mmap``
    and unmaps it on free, so each step faults all of its memory in again page by page: on a
    2-core Zen 5, a third of a DETR-R50 step was system time, a 33 M-element bf16 cast took 21 ms
    instead of 5. Within this block glibc serves them from its heap and never trims it (mallopt
    M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB); the process keeps its peak memory until the block
    ends, when glibc's defaults come back and the free memory is handed back (``malloc_trim``).
    Nothing happens off Linux/glibc, for other devices, with ``enabled=False``, or when the user set
    glibc's malloc variables or preloaded another allocator (jemalloc, tcmalloc): their choice stands.
    """
    libc = _tunable_glibc() if enabled and torch.device(device).type == "cpu" else None
    if libc is None:
        yield False
        return
    if _HEAP.depth == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    _HEAP.depth += 1
    try:
        yield True
    finally:
        _HEAP.depth -= 1
        if _HEAP.depth == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


# -- SIGTERM ---------------------------------------------------------------------------------------

class _Termination:
    handled = False  # a handler of ours is installed
    deferred = 0  # > 0 while a training loop asks to stop at its next safe point instead
    requested = False


_TERM = _Termination()


@contextlib.contextmanager
def sigterm_handled() -> Iterator[None]:
    """Within: SIGTERM raises :class:`~modinv.errors.Terminated` (a ``KeyboardInterrupt``), or, inside
    :func:`deferred_termination`, asks the loop to stop at its next safe point. Only the main
    thread can install signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _TERM.requested = True
        if not _TERM.deferred:
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    _TERM.handled, _TERM.requested = True, False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _TERM.handled = False


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """Within (a training loop): SIGTERM does not interrupt the work in progress; the loop asks
    :func:`termination_requested` at its safe points and stops there (checkpoint written)."""
    _TERM.deferred += 1
    try:
        yield
    finally:
        _TERM.deferred -= 1


def termination_requested() -> bool:
    """Whether SIGTERM arrived while :func:`sigterm_handled` was in effect."""
    return _TERM.requested
