"""Per-class IoU table on the console and a JSON result file after every evaluation."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from rich.console import Console
from rich.table import Table

from udaseg.report.results import (
    COMMAND_KEY,
    CONFUSION_KEY,
    ITERATION_KEY,
    PROVENANCE_KEY,
    metrics_file,
)
from udaseg.runtime.checkpoint_io import read_checkpoint_file
from udaseg.runtime.files import run_directory, write_json_atomic
from udaseg.runtime.provenance import provenance


def iou_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in metrics.items():
        if name.startswith("IoU/"):
            table.add_row(name[4:], "n/a" if math.isnan(value) else f"{value:.1f}")
    for name, value in metrics.items():
        if not name.startswith("IoU/"):
            table.add_row(f"[bold]{name}[/bold]", f"[bold]{value:.2f}[/bold]")
    return table


def run_seed(trainer: pl.Trainer) -> Optional[int]:
    """The seed the evaluated weights were trained with: for an evaluation of a checkpoint
    (`udaseg test --ckpt_path ...`), the training run's, from the data module's record in
    the checkpoint; else this run's (the CLI links `seed_everything` to the data module), or
    the one `seed_everything` recorded in the environment."""
    if trainer.state.fn != "fit" and trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
        state = read_checkpoint_file(trainer.ckpt_path, mmap=True)
        record = state.get(pl.LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY) or {}
        if isinstance(record.get("seed"), int):
            return record["seed"]
    seed = getattr(trainer.datamodule, "seed", None)
    if seed is None and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
        seed = int(os.environ["PL_GLOBAL_SEED"])
    return seed


class IoUReport(pl.Callback):
    """After each validation/test: print the per-class IoU table (rank 0) and write
    `<log_dir>/<stage>_metrics.json` with the metrics, the confusion matrix, the iteration and
    where the result came from (`udaseg.runtime.provenance`: the command line, which the CLI
    sets as `command_line`, the seed the weights were trained with, the git commit and the
    machine).

    Args:
        print_table: print on every evaluation (False: only at the end of fit, validate, test).
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table
        self.console = Console()
        self.command_line: Optional[str] = None

    def _report(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        evaluator = getattr(module, "evaluator", None)
        metrics: Optional[dict[str, float]] = evaluator.results.get(stage) if evaluator else None
        if not metrics or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.print_table or trainer.state.fn != "fit":
            title = f"{stage} at iteration {module.iteration}"
            self.console.print(iou_table(metrics, title))
        # `command` keeps evaluation-only runs apart from training runs in comparisons.
        write_json_atomic(run_directory(trainer) / metrics_file(stage),
                          {ITERATION_KEY: module.iteration, COMMAND_KEY: trainer.state.fn.value,
                           **metrics, CONFUSION_KEY: evaluator.matrices.get(stage),
                           PROVENANCE_KEY: provenance(self.command_line, run_seed(trainer))})

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._report(trainer, module, "val")

    def on_test_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._report(trainer, module, "test")
