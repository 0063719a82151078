"""Writes `udaseg predict` outputs: colour-coded PNGs (the dataset's class colours, with a
`legend.png` next to them) and train-id PNGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytorch_lightning as pl

from udaseg.report.visualize import colorize, legend
from udaseg.runtime.files import write_png_atomic


class PredictionWriter(pl.Callback):
    """Args:
        output_dir: where `<name>_color.png` (and `<name>_trainIds.png`) go; names keep the
            input's sub-folders.
        save_train_ids: also write single-channel train-id PNGs (255 = none), e.g. for scoring.
    """

    def __init__(self, output_dir: str = "predictions", save_train_ids: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.save_train_ids = save_train_ids

    def on_predict_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            strip = legend(module.class_names, trainer.datamodule.palette, width=640)
            write_png_atomic(self.output_dir / "legend.png", cv2.cvtColor(strip,
                                                                          cv2.COLOR_RGB2BGR))

    def on_predict_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                             outputs: dict, batch: dict, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        predictions = outputs["prediction"].cpu().numpy()
        palette = trainer.datamodule.palette
        for prediction, name in zip(predictions, outputs["name"], strict=True):
            colour = cv2.cvtColor(colorize(prediction, palette), cv2.COLOR_RGB2BGR)
            write_png_atomic(self.output_dir / f"{name}_color.png", colour)
            if self.save_train_ids:
                write_png_atomic(self.output_dir / f"{name}_trainIds.png", prediction)
