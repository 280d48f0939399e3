"""Model adapters exposing the StagedModel interface."""

from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.models.registry import available_models, load_model

__all__ = ["IMAGE", "StagedModel", "Trace", "available_models", "load_model"]
