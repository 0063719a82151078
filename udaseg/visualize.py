"""Colour coding of label maps and entropy maps for callbacks and prediction export."""

from __future__ import annotations

import cv2
import numpy as np

from udaseg.data.classes import IGNORE_INDEX

# The official Cityscapes colours of the 19 train ids (cityscapesscripts.helpers.labels).
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)], dtype=np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray = CITYSCAPES_PALETTE) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 RGB; ignore (255) and ids past the palette are black."""
    lookup = np.zeros((256, 3), dtype=np.uint8)
    lookup[:len(palette)] = palette
    lookup[IGNORE_INDEX] = 0
    return lookup[label]


def heatmap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB (dark = certain, bright = uncertain)."""
    scaled = np.clip(values * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
