"""Target entropy maps as images: the visual check that adaptation works (ADVENT's Fig. 1).

After each validation, the first validation images are shown as rows of
input | prediction | entropy map | ground truth under titled columns, with a legend of the class
colours (the dataset's palette), written to `<run dir>/entropy_maps/` and, when a W&B logger is
configured, logged as an image. Confident (low-entropy) regions are dark.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger

from udaseg.data.classes import IGNORE_INDEX
from udaseg.data.transforms import denormalize
from udaseg.losses import entropy_map
from udaseg.report.visualize import colorize, heatmap, legend, title_row
from udaseg.runtime.files import run_directory, write_png_atomic

COLUMNS = ("input", "prediction", "entropy", "truth")


class EntropyMaps(pl.Callback):
    """Args:
        num_images: rows per figure (taken from the first validation batches).

    Inputs are shown in colour by undoing the data module's own `normalization`, so the
    callback is configured the same way for every benchmark.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._rows: list[np.ndarray] = []
        # (input, prediction, ground truth, entropy heat map) per image, for W&B's panels.
        self._panels: list[tuple[np.ndarray, ...]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._rows, self._panels = [], []

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                                outputs: object, batch: dict, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        missing = self.num_images - len(self._rows)
        if missing <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        images, labels = batch["image"][:missing], batch["label"][:missing]
        size = tuple(images.shape[-2:])
        probabilities = F.softmax(module.predict_logits(images, size).float(), dim=1)
        entropy = entropy_map(probabilities).sum(dim=1).cpu().numpy()  # in [0, 1]
        predictions = probabilities.argmax(dim=1).cpu().numpy().astype(np.uint8)
        data = trainer.datamodule
        if getattr(data, "normalization", None) is None:
            raise ValueError("EntropyMaps shows the inputs of a UDADataModule (it undoes its "
                             "`normalization` and uses its palette); this run has no such data "
                             "module")
        inputs = denormalize(images, data.normalization)
        for index in range(len(images)):
            truth = labels[index].cpu().numpy().astype(np.uint8)
            truth = cv2.resize(truth, size[::-1], interpolation=cv2.INTER_NEAREST)
            entropy_image = heatmap(entropy[index])
            self._rows.append(np.concatenate(
                [inputs[index], colorize(predictions[index], data.palette), entropy_image,
                 colorize(truth, data.palette)], axis=1))
            self._panels.append((inputs[index], predictions[index], truth, entropy_image))

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not self._rows or trainer.sanity_checking or not trainer.is_global_zero:
            return
        width = self._rows[0].shape[1]
        figure = np.concatenate([title_row(COLUMNS, width), *self._rows,
                                 legend(module.class_names, trainer.datamodule.palette, width)],
                                axis=0)
        # module.iteration: the checkpoint's iterations under `udaseg validate`, as in the JSON.
        path = run_directory(trainer) / "entropy_maps" / f"iteration_{module.iteration:07d}.png"
        write_png_atomic(path, cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="val/entropy_maps", images=[figure], step=module.iteration)
            if isinstance(logger, WandbLogger):
                self._log_wandb_panels(logger, module)

    def _log_wandb_panels(self, logger: WandbLogger, module: pl.LightningModule) -> None:
        """Each input with its prediction and ground truth as W&B segmentation masks (class
        names on hover, toggled in the UI), and its entropy map."""
        labels = {index: name for index, name in enumerate(module.class_names)}
        labels[IGNORE_INDEX] = "ignore"
        masks = [{"prediction": {"mask_data": prediction, "class_labels": labels},
                  "ground_truth": {"mask_data": truth, "class_labels": labels}}
                 for _, prediction, truth, _ in self._panels]
        logger.log_image(key="val/predictions", images=[panel[0] for panel in self._panels],
                         masks=masks, step=module.iteration)
        logger.log_image(key="val/entropy", images=[panel[3] for panel in self._panels],
                         step=module.iteration)
