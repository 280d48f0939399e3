"""A module dict keyed by stage name: what an :class:`~modinv.inverse.chain.InverseChain` holds."""

from __future__ import annotations

from typing import Iterator

from torch import nn

_DOT = "\u2024"  # ModuleDict keys cannot hold ".", stage names of module-staged models can


class StageModules(nn.ModuleDict):
    """``nn.ModuleDict`` keyed by stage name (dots allowed), in stage order."""

    @staticmethod
    def _key(stage: str) -> str:
        return stage.replace(".", _DOT)

    @staticmethod
    def _stage(key: str) -> str:
        return key.replace(_DOT, ".")

    def __getitem__(self, stage: str) -> nn.Module:
        return super().__getitem__(self._key(stage))

    def __setitem__(self, stage: str, module: nn.Module) -> None:
        super().__setitem__(self._key(stage), module)

    def __delitem__(self, stage: str) -> None:
        super().__delitem__(self._key(stage))

    def __contains__(self, stage: object) -> bool:
        return isinstance(stage, str) and super().__contains__(self._key(stage))

    def __iter__(self) -> Iterator[str]:
        return (self._stage(k) for k in super().__iter__())

    def keys(self):  # type: ignore[override]
        return [self._stage(k) for k in super().keys()]

    def items(self):  # type: ignore[override]
        return [(self._stage(k), v) for k, v in super().items()]
