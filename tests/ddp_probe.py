"""Used by test_ddp.py inside the DDP child processes: each rank saves its final weights."""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        os.makedirs(self.directory, exist_ok=True)
        torch.save({"state_dict": module.state_dict(), "world_size": trainer.world_size,
                    "global_step": trainer.global_step},
                   os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))
