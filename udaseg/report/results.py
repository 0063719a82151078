"""The result files of a run, which the CLI and its callbacks write and `udaseg report` reads:
their names in the run's folder (`<save_dir>/<name>/<version>/`) and the keys of the JSON
results. Writers and readers both take them from here, so they cannot drift apart."""

from __future__ import annotations

#: The resolved config of the run (`udaseg.runtime.cli.SaveRunConfig` writes it).
CONFIG_FILE = "config.yaml"

#: The CSV logger's log; validation rows carry `val/mIoU` and the logger `step`.
METRICS_CSV = "metrics.csv"

#: Key of the iteration the evaluated weights were trained to, in a metrics file.
ITERATION_KEY = "iteration"

#: Key of the command that evaluated (`fit`, `validate`, `test`): a training run's last
#: validation is never averaged with an evaluation-only run.
COMMAND_KEY = "command"

#: Key of where the result came from (`udaseg.runtime.provenance`): command line, seed, git
#: commit, CPU model, threads; not a metric to average.
PROVENANCE_KEY = "provenance"

#: Key of the confusion matrix (rows: ground truth, columns: prediction) in a result file; not
#: a metric to average.
CONFUSION_KEY = "confusion_matrix"


def metrics_file(stage: str) -> str:
    """`<stage>_metrics.json` (`val`, `test`): the metrics of the run's latest evaluation on
    that stage, with the keys above; `udaseg.callbacks.IoUReport` writes it."""
    return f"{stage}_metrics.json"
