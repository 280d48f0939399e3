"""Training inverse components: one engine, three objectives.

- ``engine``: the loop (data order, updates, non-finite skips, validation, best-keeping,
  checkpoints and resume, time budget, DDP); ``config``: its settings (``TrainConfig``);
- ``objective``: what an objective tells the engine; ``modular`` (Eq. 1), ``classic`` (the
  full-path baseline) and ``finetune`` (Eq. 3) are the objectives and their trainer classes;
- ``run_folder``: the run folder's refusal of a second run, its lock, the resume settings check;
- ``task`` / ``set_loss``: the forward model's task loss for fine-tuning; ``data``: the train /
  validation split and batches; ``optim``, ``sampling``, ``checkpoint``, ``parallel``: the pieces.
"""
