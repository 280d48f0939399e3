"""Sizes of a model and its inverse chains, as plain dicts: what ``modinv info`` and ``modinv params``
print and write.

- :func:`describe`: a model's stages, their shapes and forward parameters, and the inverse
  components of one chain with their parameters.
- :func:`parameter_comparison`: trainable parameters of the modular chain (one component per stage,
  p in all) against the classic approach, where every stage j gets its own chain j -> image. The
  classic chains are actually built (the same component architectures, fresh from ``seed``) and
  counted, beside the modular chain's own full-path sum
  (:meth:`~modinv.inverse.chain.InverseChain.full_path_parameters`) and the paper's estimate
  (n+1)·p/2 for n stages (Section 3: each stage p/n parameters, the classic inverse of stage j
  mirroring j of them).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel


def describe(model: StagedModel, chain: InverseChain) -> dict[str, Any]:
    """Stages (shape, forward and inverse parameters), the chain's architecture and its modular and
    full-path trainable parameters."""
    shapes = model.stage_shapes()
    forward = model.parameter_counts()
    inverse = {s: sum(p.numel() for p in c.parameters()) for s, c in chain.components.items()}
    return {
        "model": model.name,
        "weights": model.weights,
        "input_size": list(model.input_size),
        "stages": [
            {"stage": s, "shape": list(shapes[s]), "forward_parameters": forward.get(s),
             "inverse_parameters": inverse.get(s)}
            for s in model.stages
        ],
        "inverse_arch": chain.arch,
        "modular_trainable_parameters": sum(inverse.values()),
        "full_path_trainable_parameters": chain.full_path_parameters()["total"],
    }


def parameter_comparison(model: StagedModel, arch: str = "default", seed: int = 0,
                         variants: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Modular vs classic trainable parameters per stage and in total (see the module docstring).

    Chains are built one at a time and dropped after counting, so that the peak memory is one
    chain's, not n + 1 of them.
    """
    chain = InverseChain.build(model, arch=arch, seed=seed, variants=variants)
    modular = chain.trainable_parameters()
    full_path = chain.full_path_parameters()
    stages = list(chain.stages)
    paths = {s: chain.path(s) for s in stages}  # the classic inverse of s: components s, ..., first
    arch_used = chain.arch
    del chain
    classic: dict[str, int] = {}
    for stage in stages:
        path = paths[stage]
        wanted = {k: v for k, v in (variants or {}).items() if k in path}
        built = InverseChain.build(model, arch=arch, seed=seed, stages=path, variants=wanted)
        classic[stage] = built.trainable_parameters()["total"]
        del built
        gc.collect()
    p, n = modular["total"], len(stages)
    classic_total = sum(classic.values())
    return {
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "arch": arch_used,
        "stages": stages,
        "forward_parameters": model.parameter_counts(),
        "modular": modular,
        "classic_measured": classic | {"total": classic_total},
        "classic_paths": paths,
        "full_path_sum": full_path,
        "paper_estimate": {"p": p, "n": n, "modular": p, "classic": (n + 1) * p / 2},
        "classic_over_modular": classic_total / p if p else None,
    }


__all__ = ["describe", "parameter_comparison"]
