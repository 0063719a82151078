"""Class tables shared by the real benchmarks (Cityscapes train ids), and class colours.

Colours belong to class *names*: a dataset's palette gives each of its train ids the colour of
its class name (`palette_for`), so a 9-class benchmark whose classes are Cityscapes classes
draws vegetation in Cityscapes' vegetation green, whatever its ids are.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Cityscapes labelIds -> train ids; every id not listed maps to the ignore label 255.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

IGNORE_INDEX = 255


# The official Cityscapes colours of the 19 train ids (cityscapesscripts.helpers.labels).
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)], dtype=np.uint8)

#: Class name -> RGB colour, the Cityscapes convention every benchmark here shares.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    name: tuple(int(v) for v in colour) for name, colour in zip(CITYSCAPES_CLASSES,
                                                                CITYSCAPES_PALETTE, strict=True)}


def _fallback_colour(index: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour for a class name the table does not know."""
    hue = int(index * 137.508) % 180  # golden-angle steps around OpenCV's 0..179 hue circle
    bgr = cv2.cvtColor(np.uint8([[[hue, 200, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[2]), int(bgr[1]), int(bgr[0])


def palette_for(class_names: Sequence[str]) -> np.ndarray:
    """(C, 3) uint8 RGB colours of train ids 0..C-1, looked up by class name."""
    return np.array([CLASS_COLOURS.get(name, _fallback_colour(index))
                     for index, name in enumerate(class_names)], dtype=np.uint8)
