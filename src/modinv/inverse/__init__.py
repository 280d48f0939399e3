"""Inverse components (one per stage, mapping it back to the stage before) and the InverseChain.

- :mod:`modinv.inverse.blocks`: transformer and upsampling blocks shared by all components;
- one file per family of the paper's components (``arch="paper"``), e.g. :mod:`modinv.inverse.detr`,
  :mod:`modinv.inverse.vit`; a model names its family in ``model.meta.inverse_family``;
- :mod:`modinv.inverse.auto`: components for any staged model from its stage shapes (``arch="auto"``);
- :mod:`modinv.inverse.registry`: ``build_component(config)`` rebuilds a component from its JSON
  config; ``FAMILIES`` lists the family files;
- :mod:`modinv.inverse.chain`: :class:`InverseChain` (build, reconstruct, replace, parameter counts);
- :mod:`modinv.inverse.storage`: the saved chain folder (safetensors + JSON, manifest, checksums).
"""

from modinv.inverse.chain import InverseChain
from modinv.inverse.registry import build_component, component_kinds, register
from modinv.inverse.storage import load_component, read_manifest

__all__ = [
    "InverseChain",
    "build_component",
    "component_kinds",
    "load_component",
    "read_manifest",
    "register",
]
