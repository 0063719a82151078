"""Deprecated import path, kept for one release: use udaseg.evaluation.metrics."""

from udaseg.evaluation.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    summarize,
)

__all__ = ["confusion_matrix", "ConfusionMatrix", "iou_per_class", "mean_iou", "summarize"]
