"""A CSV logger that survives a resume: the run's `metrics.csv` goes on where the checkpoint
left it instead of being deleted (Lightning's `CSVLogger` removes an existing file when a run
reuses its folder, which `udaseg fit --ckpt_path last` does).

Rows reach the file at every checkpoint and after every evaluation, not only every
`flush_logs_every_n_steps`, so a killed run has written everything its last checkpoint
covers; `truncate_metrics` then drops the rows of iterations after that checkpoint, which the
resumed run logs again.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from udaseg.callbacks.files import replace_atomically

#: Metric-name prefixes of evaluation results, written to the file as soon as they arrive.
EVALUATION_PREFIXES = ("val/", "test/")


class _KeepingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        # The existing columns, so rows with fewer keys append instead of rewriting the file.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as stream:
                self.metrics_keys = list(csv.DictReader(stream).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Keep an existing metrics.csv: new rows are appended to it."""


class CSVLogger(LightningCSVLogger):
    """Lightning's `CSVLogger` (same arguments and files) for runs that may be resumed."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        super().log_metrics(metrics, step)
        if any(name.startswith(EVALUATION_PREFIXES) for name in metrics):
            self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


def truncate_metrics(metrics_file: Path, iterations: int) -> int:
    """Keep the rows of `metrics_file` that the first `iterations` iterations logged (Lightning
    logs iteration i and a validation after it as step i - 1), drop later ones (atomically);
    returns how many were dropped. A missing file drops nothing."""
    if not metrics_file.is_file():
        return 0
    with open(metrics_file, newline="") as stream:
        reader = csv.DictReader(stream)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < iterations]
    if len(kept) == len(rows):
        return 0
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)   # Lightning's dialect
    writer.writeheader()
    writer.writerows(kept)

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="") as stream:
            stream.write(text.getvalue())

    replace_atomically(metrics_file, write)
    return len(rows) - len(kept)
