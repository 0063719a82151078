"""The evaluator of every method: test-time inference, a confusion matrix per stage on the
device, and per-class IoU with mIoU over named class subsets (mmsegmentation's `IoUMetric`
split: `process` each batch, `compute` at the end)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import nn

from udaseg.evaluation.inference import Inference, LogitsFunction, infer_logits
from udaseg.evaluation.metrics import ConfusionMatrix, summarize

STAGES = ("val", "test")


class SegmentationEvaluator(nn.Module):
    """Confusion matrices of the "val" and "test" stages (summed over DDP ranks by torchmetrics
    at `compute`; not part of the state dict) and the results of the last evaluation.

    Args:
        num_classes, ignore_index: the label space.
        class_names: one name per class (metric keys `IoU/<name>`).
        subsets: named class subsets, each reported as its mean IoU (e.g. `{"mIoU": [0..18],
            "mIoU-16": [...]}`); all classes as "mIoU" by default.
        inference: test-time options (flip, scales, sliding windows).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 class_names: Optional[Sequence[str]] = None,
                 subsets: Optional[Mapping[str, Sequence[int]]] = None,
                 inference: Inference = Inference()) -> None:
        super().__init__()
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries, "
                             f"num_classes is {num_classes}")
        self.subsets = dict(subsets or {"mIoU": list(range(num_classes))})
        self.inference = inference
        self.confusion = nn.ModuleDict({stage: ConfusionMatrix(num_classes, ignore_index)
                                        for stage in STAGES})
        #: Latest results per stage, read by callbacks (IoU table, result files) ...
        self.results: dict[str, dict[str, float]] = {}
        #: ... and their confusion matrices (rows: ground truth, columns: prediction).
        self.matrices: dict[str, list[list[int]]] = {}

    def predict(self, logits_at: LogitsFunction, images: torch.Tensor,
                size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
        """(N, C, *size) logits of `images` under the test-time options; `logits_at(images,
        size)` is one network pass at that size, resized with `align_corners` as
        `infer_logits` resizes stitched windows."""
        return infer_logits(logits_at, images, size, self.inference, align_corners)

    def process(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: (N, C, H, W) logits against (N, H, W) labels."""
        self.confusion[stage].update(logits.argmax(dim=1), labels)

    def compute(self, stage: str) -> dict[str, float]:
        """The stage's metrics over every batch since the last `compute` (every rank's), kept in
        `results` and `matrices`; the matrix starts again from zero."""
        confusion = self.confusion[stage]
        matrix = confusion.compute()
        metrics = summarize(matrix, self.class_names, self.subsets)
        confusion.reset()
        self.results[stage] = metrics
        self.matrices[stage] = matrix.cpu().tolist()
        return metrics
