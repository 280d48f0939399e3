"""modinv: modular feature inversion of vision models.

    model = modinv.load_model("vit-b16", weights="random")
    trace = model.trace(images)                    # every stage's representation
    chain = modinv.InverseChain.build(model)       # one inverse component per stage
    images_hat = chain.reconstruct(trace, stage="enc")

Every public name is imported on first use (PEP 562), so ``import modinv`` and ``import modinv.cli``
load no torch: the command line answers Ctrl-C in its first second with one line, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

# public name -> the module that defines it (imported when the name is first used)
_LAZY: dict[str, str] = {
    "IMAGE": "modinv.models.base",
    "InverseChain": "modinv.inverse.chain",
    "ModinvError": "modinv.errors",
    "StagedModel": "modinv.models.base",
    "Trace": "modinv.models.base",
    "WeightsUnavailableError": "modinv.errors",
    "available_models": "modinv.models.registry",
    "list_models": "modinv.models.registry",
    "load_model": "modinv.models.registry",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use
    from modinv.errors import ModinvError, WeightsUnavailableError
    from modinv.inverse.chain import InverseChain
    from modinv.models.base import IMAGE, StagedModel, Trace
    from modinv.models.registry import available_models, list_models, load_model


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here for the next lookup."""
    if name not in _LAZY:
        raise AttributeError(f"module 'modinv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
