"""Deprecated import path, kept for one release: use udaseg.runtime.loggers."""

from udaseg.runtime.loggers import EVALUATION_PREFIXES, CSVLogger, logged_batches, truncate_metrics

__all__ = ["EVALUATION_PREFIXES", "CSVLogger", "logged_batches", "truncate_metrics"]
