"""Callbacks: reporting and visualisation stay out of the training steps."""

from udaseg.callbacks.iou_report import IoUReport

__all__ = ["IoUReport"]
