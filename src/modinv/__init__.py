"""modinv: modular feature inversion of vision models.

    model = modinv.load_model("vit-b16", weights="random")
    trace = model.trace(images)                    # every stage's representation
    chain = modinv.InverseChain.build(model)       # one inverse component per stage
    images_hat = chain.reconstruct(trace, stage="enc")
"""

from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.models.registry import available_models, list_models, load_model

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

__all__ = [
    "IMAGE",
    "InverseChain",
    "ModinvError",
    "StagedModel",
    "Trace",
    "WeightsUnavailableError",
    "available_models",
    "list_models",
    "load_model",
]


def __getattr__(name: str):
    # The inverse package pulls in more code than loading a model needs; import it on first use.
    if name == "InverseChain":
        from modinv.inverse.chain import InverseChain

        return InverseChain
    raise AttributeError(f"module 'modinv' has no attribute {name!r}")
