"""Model adapters exposing the StagedModel interface, each declaring its ModelMeta."""

from modinv.models.base import IMAGE, ModelMeta, StagedModel, Trace
from modinv.models.modules import from_module
from modinv.models.registry import available_models, load_model

__all__ = ["IMAGE", "ModelMeta", "StagedModel", "Trace", "available_models", "from_module", "load_model"]
