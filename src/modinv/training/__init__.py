"""Training inverse components: one entry point, one engine, three objectives.

- ``entry``: :func:`train`, the one way a run is assembled (chain, data, config, trainer), which
  ``modinv train``, ``modinv finetune`` and the demo call; it returns a :class:`TrainResult`;

- ``engine``: the loop (data order, updates, non-finite skips, validation, best-keeping,
  checkpoints and resume, time budget, DDP); ``config``: its settings (``TrainConfig``);
- ``objective``: what an objective tells the engine; ``modular`` (Eq. 1), ``classic`` (the
  full-path baseline) and ``finetune`` (Eq. 3) are the objectives and their trainer classes;
- ``run_folder``: the run folder's refusal of a second run, its lock, the resume settings check;
- ``task`` / ``set_loss``: the forward model's task loss for fine-tuning; ``data``: the train /
  validation split and batches; ``optim``, ``sampling``, ``checkpoint``, ``parallel``: the pieces.
"""

__all__ = ["TrainResult", "train"]


def __getattr__(name: str):
    # The engine pulls in the data loaders and more: imported when the entry point is first used.
    if name in __all__:
        from modinv.training import entry

        return getattr(entry, name)
    raise AttributeError(f"module 'modinv.training' has no attribute {name!r}")
