"""A CSV logger that survives a resume: the run's `metrics.csv` goes on where the checkpoint
left it instead of being deleted (Lightning's `CSVLogger` removes an existing file when a run
reuses its folder, which `udaseg fit --ckpt_path last` does).

Rows reach the file at every checkpoint and after every evaluation, not only every
`flush_logs_every_n_steps`, so a killed run has written everything its last checkpoint
covers; `truncate_metrics` then drops the rows of iterations after that checkpoint, which the
resumed run logs again, and a last row cut short by a kill during an append. When new columns
appear, the file is rewritten under a temporary name and renamed over the old one, so a process
killed then (SIGKILL, or a node that died) never leaves a metrics.csv without its earlier rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from fsspec.implementations.local import LocalFileSystem
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from udaseg.runtime.files import replace_atomically

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

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning truncates the file and then writes it back: a kill in between loses it.
        if not isinstance(self._fs, LocalFileSystem):
            super()._rewrite_with_new_header(fieldnames)
            return
        with open(self.metrics_file_path, newline="") as stream:
            rows = list(csv.DictReader(stream))

        def write(temporary: str) -> None:
            with open(temporary, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        replace_atomically(Path(self.metrics_file_path), write)


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


def logged_batches(checkpoint: dict) -> int:
    """The training batches a checkpoint's run had logged, i.e. the logger step its resumed run
    logs first. Lightning's logger step counts batches (under manual optimisation every batch,
    an iteration skipped for a non-finite loss included), so it equals `global_step` only when
    no iteration was skipped. The saved counter lags by the batch being finished when the
    checkpoint was written mid-batch (periodic and preemption checkpoints); Lightning adds that
    batch on resume by the same rule as here."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    counter = (fit_loop.get("epoch_loop.state_dict") or {}).get("_batches_that_stepped")
    if counter is None:
        return int(checkpoint.get("global_step", 0))
    progress = (fit_loop.get("epoch_loop.batch_progress") or {}).get("total") or {}
    finished = len({progress.get(key) for key in
                    ("ready", "started", "processed", "completed")}) == 1
    return int(counter) + (0 if finished else 1)


def truncate_metrics(metrics_file: Path, iterations: int) -> int:
    """Keep the rows of `metrics_file` that the first `iterations` training batches logged
    (Lightning logs batch i and a validation after it as step i - 1; `logged_batches` reads the
    count from a checkpoint), drop later ones (atomically); returns how many were dropped. A
    last row without its line end (the process was killed while appending it) is dropped too:
    later appends would continue that line. A missing file drops nothing."""
    if not metrics_file.is_file():
        return 0
    with open(metrics_file, newline="") as stream:
        content = stream.read()
    whole_lines = content[:content.rfind("\n") + 1]
    cut_short = int(whole_lines != content)
    reader = csv.DictReader(io.StringIO(whole_lines))
    fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < iterations]
    if len(kept) == len(rows) and not cut_short:
        return 0
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)   # Lightning's dialect
    writer.writeheader()
    writer.writerows(kept)

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="") as stream:
            stream.write(text.getvalue())

    replace_atomically(metrics_file, write)
    return len(rows) - len(kept) + cut_short
