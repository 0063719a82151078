"""Figures of `udaseg report --plots DIR` (matplotlib, headless): validation mIoU against
iteration per row with a band over seeds, per-class IoU bars, and each row's row-normalised
confusion matrix. Every PNG is written atomically."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # headless: no display on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from udaseg.report.compare import Run, validation_history  # noqa: E402
from udaseg.runtime.files import replace_atomically  # noqa: E402


def slug(label: str) -> str:
    """A file-name-safe version of a row label."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "run"


def save(figure: plt.Figure, path: Path) -> Path:
    replace_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120,
                                                                bbox_inches="tight"))
    plt.close(figure)
    return path


def curves(groups: dict[str, list[Run]], path: Path) -> Path | None:
    """Validation mIoU against iteration: the mean over seeds, shaded from min to max."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for label, members in groups.items():
        by_iteration: dict[int, list[float]] = {}
        for run in members:
            for iteration, metrics in validation_history(run):
                by_iteration.setdefault(iteration, []).append(metrics["mIoU"])
        if not by_iteration:
            continue
        iterations = sorted(by_iteration)
        values = [by_iteration[iteration] for iteration in iterations]
        line, = axes.plot(iterations, [statistics.mean(v) for v in values], marker="o",
                          label=f"{label} ({len(members)} seed{'s' * (len(members) > 1)})")
        axes.fill_between(iterations, [min(v) for v in values], [max(v) for v in values],
                          color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set(xlabel="iteration", ylabel="validation mIoU", title="validation mIoU (band: "
             "min to max over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save(figure, path)


def per_class_bars(groups: dict[str, list[Run]], stage: str, path: Path) -> Path | None:
    """Mean IoU of each class per row, error bars one standard deviation over seeds."""
    first = next(iter(groups.values()))[0].metrics
    classes = [key.removeprefix("IoU/") for key in first if key.startswith("IoU/")]
    if not classes:
        return None
    figure, axes = plt.subplots(figsize=(max(7.0, 0.9 * len(classes) * len(groups) ** 0.5), 4.5))
    width = 0.8 / len(groups)
    positions = np.arange(len(classes))
    for index, (label, members) in enumerate(groups.items()):
        values = [[run.metrics.get(f"IoU/{name}", np.nan) for run in members]
                  for name in classes]
        means = [float(np.nanmean(v)) if not np.all(np.isnan(v)) else 0.0 for v in values]
        spreads = [float(np.nanstd(v, ddof=1)) if np.sum(~np.isnan(v)) > 1 else 0.0
                   for v in values]
        # IoU is never negative: the lower error bar stops at 0.
        axes.bar(positions + (index - (len(groups) - 1) / 2) * width, means, width,
                 yerr=[np.minimum(means, spreads), spreads], capsize=2, label=label)
    axes.set_xticks(positions, classes, rotation=45, ha="right")
    axes.set(ylabel=f"{stage} IoU", title=f"{stage} IoU per class (mean ± std over seeds)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return save(figure, path)


def confusion_heatmap(label: str, members: Sequence[Run], class_names: Sequence[str],
                      stage: str, path: Path) -> Path | None:
    """The members' summed confusion matrix, each row divided by its ground-truth pixels."""
    matrices = [np.asarray(run.confusion, dtype=np.float64) for run in members
                if run.confusion is not None]
    if not matrices:
        return None
    matrix = np.sum(matrices, axis=0)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.55 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    for row, column in np.ndindex(normalised.shape):
        if normalised[row, column] >= 0.005:
            axes.text(column, row, f"{100 * normalised[row, column]:.0f}", ha="center",
                      va="center", fontsize=7,
                      color="white" if normalised[row, column] > 0.5 else "black")
    axes.set(xlabel="predicted class", ylabel="ground-truth class",
             title=f"{label}: {stage} confusion (% of each class's pixels, "
                   f"{len(matrices)} seed{'s' * (len(matrices) > 1)})")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return save(figure, path)


def write_plots(groups: dict[str, list[Run]], stage: str, directory: Path) -> list[Path]:
    """All figures for the report's rows into `directory`; the paths written."""
    first = next(iter(groups.values()))[0].metrics
    class_names = [key.removeprefix("IoU/") for key in first if key.startswith("IoU/")]
    written = [curves(groups, directory / "val_miou_curves.png"),
               per_class_bars(groups, stage, directory / f"{stage}_iou_per_class.png")]
    written += [confusion_heatmap(label, members, class_names, stage,
                                  directory / f"{stage}_confusion_{slug(label)}.png")
                for label, members in groups.items()]
    return [path for path in written if path is not None]
