"""Inverse components (one per stage, mapping it back to the stage before) and the InverseChain.

- :mod:`modinv.inverse.blocks`: transformer and upsampling blocks shared by all components;
- :mod:`modinv.inverse.detr`, :mod:`modinv.inverse.vit`: the paper's components (``arch="paper"``);
- :mod:`modinv.inverse.auto`: components for any staged model from its stage shapes (``arch="auto"``);
- :mod:`modinv.inverse.registry`: ``build_component(config)`` rebuilds a component from its JSON config;
- :mod:`modinv.inverse.chain`: :class:`InverseChain` (build, reconstruct, save, load, replace).
"""

from modinv.inverse.chain import (
    InverseChain,
    full_path_parameter_count,
    full_path_parameter_estimate,
    load_component,
    read_manifest,
)
from modinv.inverse.registry import build_component, component_kinds, register

__all__ = [
    "InverseChain",
    "build_component",
    "component_kinds",
    "full_path_parameter_count",
    "full_path_parameter_estimate",
    "load_component",
    "read_manifest",
    "register",
]
