"""Kept snapshots of a run, apart from the checkpoint it resumes from."""

from __future__ import annotations

from typing import Optional

from pytorch_lightning.callbacks import ModelCheckpoint


class Snapshots(ModelCheckpoint):
    """A checkpoint kept every `every_n_iterations` iterations (`epoch=0-step=N.ckpt` next to
    `last.ckpt`); None (the default) keeps none.

    The CLI's `checkpoint` (`last.ckpt`, rewritten every `checkpoint.every_n_train_steps`) is
    where a killed run resumes and should be frequent; snapshots are for evaluating or
    comparing iterations later and are large, so they are rare. Choosing one by target-val mIoU
    is an oracle selection.
    """

    def __init__(self, every_n_iterations: Optional[int] = None, dirpath: Optional[str] = None,
                 filename: Optional[str] = None) -> None:
        if every_n_iterations is not None and every_n_iterations < 1:
            raise ValueError(f"snapshots.every_n_iterations must be >= 1 (or null for none), "
                             f"got {every_n_iterations}")
        # 0 for both triggers: Lightning then never saves on its own schedule.
        super().__init__(dirpath=dirpath, filename=filename, save_top_k=-1, save_last=False,
                         every_n_train_steps=every_n_iterations or 0, every_n_epochs=0)
