"""Evaluation: segmentation metrics over class subsets (`metrics`), test-time inference (flip,
multi-scale, sliding windows; `inference`) and the evaluator every method holds (`evaluator`)."""

from udaseg.evaluation.evaluator import SegmentationEvaluator
from udaseg.evaluation.inference import (
    Inference,
    LogitsFunction,
    infer_logits,
    sliding_window_logits,
    window_starts,
)
from udaseg.evaluation.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    summarize,
)

__all__ = ["ConfusionMatrix", "Inference", "LogitsFunction", "SegmentationEvaluator",
           "confusion_matrix", "infer_logits", "iou_per_class", "mean_iou",
           "sliding_window_logits", "summarize", "window_starts"]
