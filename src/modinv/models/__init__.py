"""Model adapters exposing the StagedModel interface."""

from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.models.modules import from_module
from modinv.models.registry import available_models, load_model

__all__ = ["IMAGE", "StagedModel", "Trace", "available_models", "from_module", "load_model"]
