"""Deprecated import path, kept for one release: use udaseg.report.visualize."""

from udaseg.report.visualize import (
    CITYSCAPES_PALETTE,
    colorize,
    heatmap,
    legend,
    palette_for,
    title_row,
)

__all__ = ["CITYSCAPES_PALETTE", "colorize", "heatmap", "legend", "palette_for", "title_row"]
