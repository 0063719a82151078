"""Segmentation metrics: a confusion matrix kept on the device, IoU per class, mIoU over subsets.

Papers in this field report mIoU over different class subsets of the same 19-class prediction
(SYNTHIA→Cityscapes: 16 and 13 classes; Cross-City: 13), so one evaluation computes every subset
from one confusion matrix instead of running the evaluation once per subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Count (label, prediction) pairs.

    Args:
        predictions: (...) integer class ids in [0, num_classes) (e.g. an argmax).
        labels: (...) integer class ids, same shape; pixels equal to `ignore_index` (or outside
            [0, num_classes)) are not counted. uint8 labels (what the evaluation loaders
            deliver) take the fastest path.

    Returns:
        (num_classes, num_classes) int64 matrix, rows = ground truth, columns = prediction.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels "
                         f"{tuple(labels.shape)} must have the same shape")
    labels = labels.reshape(-1)
    predictions = predictions.reshape(-1)
    bins = num_classes * num_classes
    if bins + num_classes > torch.iinfo(torch.int16).max:   # > 180 classes: the plain way
        valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
        flat = torch.where(valid, labels.long() * num_classes + predictions.long(), bins)
        return torch.bincount(flat, minlength=bins + 1)[:bins].reshape(num_classes, num_classes)
    # Narrow integers and no compaction of the valid pixels (a boolean index copies them):
    # every uncounted label becomes row `num_classes`, whose bins are dropped. uint8 labels
    # need one pass; wider ones are clamped to [-1, C] first, and uint8 wraps -1 to 255.
    # Measured at 2048x1024 in benchmarks/eval_speed.py (docs/speed.md).
    rows = labels if labels.dtype == torch.uint8 else \
        labels.clamp(-1, num_classes).to(torch.uint8)
    rows = rows.clamp_max(num_classes)
    if 0 <= ignore_index < num_classes:
        rows = rows.masked_fill(labels == ignore_index, num_classes)
    flat = predictions.to(torch.int16, copy=True)   # never the caller's tensor
    flat.add_(rows, alpha=num_classes)
    counts = torch.bincount(flat, minlength=bins + num_classes)
    return counts[:bins].reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP_c / (TP_c + FP_c + FN_c); NaN for a class absent from labels and predictions."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


def mean_iou(ious: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """Mean IoU over `classes` (all by default), skipping classes with undefined IoU (NaN).

    Skipping NaN matches the official ADVENT/cityscapesscripts evaluation (`np.nanmean`).
    """
    selected = ious if classes is None else ious[list(classes)]
    selected = selected[~torch.isnan(selected)]
    return float(selected.mean()) if selected.numel() else float("nan")


class ConfusionMatrix(Metric):
    """A DDP-aware confusion matrix (torchmetrics sums it over processes at `compute`)."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("matrix", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.matrix += confusion_matrix(predictions, labels, self.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor:
        return self.matrix


def summarize(confusion: torch.Tensor, class_names: Sequence[str],
              subsets: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Flat metric dict: one entry per subset (e.g. 'mIoU-16') and 'IoU/<class>' per class."""
    ious = iou_per_class(confusion)
    metrics = {name: 100.0 * mean_iou(ious, classes) for name, classes in subsets.items()}
    for index, name in enumerate(class_names):
        metrics[f"IoU/{name}"] = 100.0 * float(ious[index])
    return metrics
