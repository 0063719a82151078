"""Callbacks: reporting and visualisation stay out of the training steps."""

from udaseg.callbacks.entropy_maps import EntropyMaps
from udaseg.callbacks.iou_report import IoUReport
from udaseg.callbacks.last_checkpoint import LastCheckpoint
from udaseg.callbacks.prediction_writer import PredictionWriter
from udaseg.callbacks.preemption import Preemption
from udaseg.callbacks.progress import IterationProgressBar
from udaseg.callbacks.snapshots import Snapshots
from udaseg.callbacks.wandb_report import WandbReport

__all__ = ["EntropyMaps", "IoUReport", "IterationProgressBar", "LastCheckpoint", "Preemption",
           "PredictionWriter", "Snapshots", "WandbReport"]
