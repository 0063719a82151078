"""Colour coding of label maps and entropy maps, legends and titled figures, for callbacks and
prediction export. Palettes (colour by class name) live with the class tables,
`udaseg.data.classes.palette_for`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from udaseg.data.classes import CITYSCAPES_PALETTE, IGNORE_INDEX, palette_for

__all__ = ["CITYSCAPES_PALETTE", "colorize", "heatmap", "legend", "palette_for", "title_row"]

def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 RGB; ignore (255) and ids past the palette are black."""
    lookup = np.zeros((256, 3), dtype=np.uint8)
    lookup[:len(palette)] = palette
    lookup[IGNORE_INDEX] = 0
    return lookup[label]


def heatmap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB (dark = certain, bright = uncertain)."""
    scaled = np.clip(values * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_ROW = 18  # pixels per line of text


def _text(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(canvas, text, (x, y + 13), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def title_row(titles: Sequence[str], width: int) -> np.ndarray:
    """(18, width, 3) black strip with one title per equally wide column."""
    row = np.zeros((_TEXT_ROW, width, 3), dtype=np.uint8)
    column = width // len(titles)
    for index, title in enumerate(titles):
        _text(row, title, index * column + 3, 0)
    return row


def legend(class_names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """(k * 18, width, 3) strip of colour swatches with class names, wrapped to `width`."""
    entries = [(name, tuple(int(v) for v in palette[index]))
               for index, name in enumerate(class_names)]
    entry_width = 12 + 7 * max(len(name) for name in class_names) + 10
    per_row = max(1, width // entry_width)
    rows = -(-len(entries) // per_row)
    strip = np.zeros((rows * _TEXT_ROW, width, 3), dtype=np.uint8)
    for index, (name, colour) in enumerate(entries):
        x, y = (index % per_row) * entry_width + 3, (index // per_row) * _TEXT_ROW
        strip[y + 4:y + 14, x:x + 10] = colour
        _text(strip, name, x + 14, y)
    return strip
