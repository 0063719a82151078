"""Deprecated import path, kept for one release: use udaseg.evaluation.inference."""

from udaseg.evaluation.inference import (
    Inference,
    LogitsFunction,
    infer_logits,
    sliding_window_logits,
    window_starts,
)

__all__ = ["infer_logits", "Inference", "LogitsFunction", "sliding_window_logits", "window_starts"]
