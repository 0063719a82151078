"""Callbacks: reporting and visualisation stay out of the training steps."""

from udaseg.callbacks.entropy_maps import EntropyMaps
from udaseg.callbacks.iou_report import IoUReport

__all__ = ["EntropyMaps", "IoUReport"]
