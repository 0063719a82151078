"""What a W&B run should hold beyond the scalar curves: the per-class IoU of every evaluation
as a table, the resolved config and the git commit of the code that ran (image panels of target
predictions come from `EntropyMaps`). Does nothing for runs without a `WandbLogger`."""

from __future__ import annotations

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import WandbLogger

from udaseg.runtime.files import run_directory
from udaseg.runtime.provenance import git_state


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class WandbReport(pl.Callback):
    """Per-class IoU as `wandb.Table`s (`<stage>/per_class_iou`, one per evaluation, with the
    iteration), and `udaseg.git_commit`, `udaseg.git_dirty` and `udaseg.config` (the resolved
    config.yaml) in the run's config."""

    def __init__(self) -> None:
        self._described = False

    def _describe_run(self, trainer: pl.Trainer) -> None:
        loggers = wandb_loggers(trainer)
        if self._described or not loggers or not trainer.is_global_zero:
            return
        self._described = True
        config_file = run_directory(trainer) / "config.yaml"
        resolved = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
        for logger in loggers:
            logger.experiment.config.update({"udaseg": {**git_state(), "config": resolved}},
                                            allow_val_change=True)

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._describe_run(trainer)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._describe_run(trainer)

    def on_test_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._describe_run(trainer)

    def _log_table(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        evaluator = getattr(module, "evaluator", None)
        metrics = evaluator.results.get(stage) if evaluator else None
        if not metrics or trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = [[name.removeprefix("IoU/"), value] for name, value in metrics.items()
                if name.startswith("IoU/")]
        for logger in wandb_loggers(trainer):
            logger.log_table(key=f"{stage}/per_class_iou", columns=["class", "IoU"], data=rows,
                             step=module.iteration)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._log_table(trainer, module, "val")

    def on_test_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._log_table(trainer, module, "test")
