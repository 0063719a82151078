"""A progress bar that counts iterations, not epochs: udaseg's training streams are endless, so
Lightning's "Epoch 0/-2" says nothing. Shows iteration k/max_steps, it/s, the time left and the
method's main losses (`UDAMethod.progress_losses`)."""

from __future__ import annotations

from typing import Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class IterationProgressBar(RichProgressBar):
    """`RichProgressBar` labelled "Iteration", without Lightning's `v_num` column."""

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's hook for the bar's label ("Epoch N/max_epochs - 1" by default).
        return f"{'Iteration':{len(self.validation_description)}}"

    def get_metrics(self, trainer: pl.Trainer,
                    pl_module: pl.LightningModule) -> dict[str, Union[int, str, float, dict]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
