"""Deprecated import path, kept for one release: use udaseg.report.compare (result-file keys:
udaseg.report.results; `main`: udaseg.runtime.cli.report). `python -m udaseg.compare ARGS` runs
`udaseg report ARGS`."""

import sys

from udaseg.report.compare import (
    NOT_THE_EXPERIMENT,
    Run,
    best_validation,
    collect,
    experiment,
    flatten,
    group,
    latex_table,
    mean_std,
    missing_stage,
    render,
    start_run,
    summarize,
    validation_history,
    warn_mixed_iterations,
)
from udaseg.report.results import CONFUSION_KEY

__all__ = ["CONFUSION_KEY", "NOT_THE_EXPERIMENT", "Run", "best_validation", "collect",
           "experiment", "flatten", "group", "latex_table", "mean_std", "missing_stage",
           "render", "start_run", "summarize", "validation_history", "warn_mixed_iterations"]


def __getattr__(name: str):
    # `main` is the CLI's report command: imported on first use, as the CLI loads every layer.
    if name == "main":
        from udaseg.runtime.cli import report

        return report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from udaseg.runtime.cli import main as udaseg_main

    udaseg_main(["report", *sys.argv[1:]])
