"""The paper's analyses as library functions returning result objects (numbers + figure data, with
``to_json()``), each with a figure function taking the result; ``modinv analyze`` is their CLI.

Modules: ``stages`` (per-stage error vs the mean image), ``structure`` (FD vs OH pred⁻¹), ``layers``
(intermediate layers), ``color``, ``tokens``, ``errors``; helpers ``evaluate``, ``task``,
``reconstruct`` and ``common`` (batches, :class:`~modinv.analysis.common.AnalysisResult`).
"""
