"""Deprecated import path, kept for one release: use udaseg.report.plots."""

from udaseg.report.plots import confusion_heatmap, curves, per_class_bars, save, slug, write_plots

__all__ = ["confusion_heatmap", "curves", "per_class_bars", "save", "slug", "write_plots"]
