"""Compare runs: mean ± std of mIoU and per-class IoU over the versions (seeds) of each run.

    python -m udaseg.compare runs/ --stage test [--per-class] [--markdown]

Reads `<root>/<run name>/<version>/<stage>_metrics.json` (written by the IoU report callback);
each version of a run name (`version_0`, or `seed0` when named) counts as one seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def collect(root: Path, stage: str) -> dict[str, list[dict[str, float]]]:
    """Run name -> list of metric dicts, one per version that has `<stage>_metrics.json`."""
    runs: dict[str, list[dict[str, float]]] = {}
    for path in sorted(root.glob(f"*/*/{stage}_metrics.json")):
        runs.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    if not runs:
        raise FileNotFoundError(f"no <run>/<version>/{stage}_metrics.json under {root}")
    return runs


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarize(runs: dict[str, list[dict[str, float]]],
              per_class: bool) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (run, seeds, metric columns) of the comparison."""
    first = next(iter(runs.values()))[0]
    keys = [key for key in first
            if key != "iteration" and (per_class or not key.startswith("IoU/"))]
    header = ["run", "seeds"] + [key.removeprefix("IoU/") for key in keys]
    rows = [[name, str(len(results))] + [mean_std([result[key] for result in results])
                                         for key in keys]
            for name, results in runs.items()]
    return header, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compare udaseg runs (mean ± std over seeds).")
    parser.add_argument("root", type=Path, help="logger save_dir, e.g. runs/")
    parser.add_argument("--stage", default="test", choices=["val", "test"])
    parser.add_argument("--per-class", action="store_true", help="add per-class IoU columns")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    header, rows = summarize(collect(args.root, args.stage), args.per_class)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    table = Table(title=f"{args.stage} metrics (mean ± std over seeds)")
    for column in header:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
