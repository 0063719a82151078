"""`udaseg report ROOT... [options]`: the comparison of runs as a table on stdout (console,
Markdown, LaTeX or CSV) and, with `--plots DIR`, as figures.

    udaseg report runs --stage test --per-class --format markdown
    udaseg report results/synthetic --paired source_only --format markdown
    udaseg report runs/synthetic --stage val --best --plots figures/

`udaseg.runtime.cli` dispatches the subcommand here; `udaseg.report.pages` runs the same
function to render the tables of the documentation from result files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from udaseg.report.compare import (
    collect,
    group,
    paired_differences,
    render,
    summarize,
    warn_mixed_iterations,
)


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(
        prog="udaseg report", description="Compare udaseg runs (mean ± std over seeds).")
    command.add_argument("roots", type=Path, nargs="+",
                         help="runs/, runs/<name>, or one version folder (several allowed)")
    command.add_argument("--stage", default="test", choices=["val", "test"])
    command.add_argument("--per-class", action="store_true", help="add per-class IoU columns")
    command.add_argument("--format", default="table", dest="form",
                         choices=["table", "markdown", "latex", "csv"])
    command.add_argument("--markdown", action="store_const", const="markdown", dest="form",
                         help="same as --format markdown")
    command.add_argument("--best", action="store_true",
                         help="add each row's best validation (from metrics.csv; an oracle "
                              "selection, labelled so)")
    command.add_argument("--paired", metavar="ROW",
                         help="instead of means: each row minus row ROW on the same seeds and "
                              "machine type (per-seed mIoU differences, mean ± standard error)")
    command.add_argument("--provenance", action="store_true",
                         help="add the machine (CPU model, cores, native bf16; GPU) and the "
                              "git commits of each row's result files")
    command.add_argument("--plots", type=Path, metavar="DIR",
                         help="write PNG figures (curves, per-class bars, confusion matrices)")
    return command


def report(arguments: Sequence[str] | None = None) -> None:
    """Run `udaseg report` with `arguments` (sys.argv[2:] when None). A user's mistake is
    raised (a missing folder or result file: `FileNotFoundError`, an unknown `--paired` row:
    `ValueError`); the CLI prints it in one line."""
    args = parser().parse_args(arguments)
    runs = [run for root in args.roots for run in collect(root, args.stage)]
    warn_mixed_iterations(runs)
    groups = group(runs)
    if args.paired is not None:
        header, rows = paired_differences(groups, args.paired, args.per_class, args.provenance)
        title = f"{args.stage} metrics minus {args.paired} (mean ± SE over paired seeds)"
    else:
        header, rows = summarize(groups, args.per_class, args.best, args.provenance)
        title = f"{args.stage} metrics (mean ± std over seeds)"
    render(header, rows, args.form, title)
    if args.plots is not None:
        try:                                  # matplotlib only when figures are asked for
            from udaseg.report.plots import write_plots
        except ModuleNotFoundError as error:
            raise SystemExit(f"udaseg report --plots needs matplotlib ({error}): pip install "
                             "-e '.[plots]'") from None
        for path in write_plots(groups, args.stage, args.plots):
            print(f"wrote {path}", file=sys.stderr)
