"""`last.ckpt`, the checkpoint a killed or finished run is resumed and evaluated from."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` (the CLI's `checkpoint` keys), plus: with `save_last`, the
    weights of the run's final iteration are always in `last.ckpt` when fit ends.

    Lightning writes `last.ckpt` at the end of fit only if it never wrote one before, so a run
    saving every `every_n_train_steps` iterations whose length is not a multiple of that (250
    iterations, a checkpoint every 100) would end with the weights of iteration 200 in
    `last.ckpt`, and `udaseg test --ckpt_path .../last.ckpt` would evaluate those.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
