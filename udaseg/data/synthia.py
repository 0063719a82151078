"""SYNTHIA-RAND-CITYSCAPES: the synthetic source of SYNTHIA -> Cityscapes.

Layout of the release (9,400 pairs)::

    <root>/RGB/0000000.png ...          RGB, 1280x760
    <root>/GT/LABELS/0000000.png ...    16-bit, multi-channel PNGs: the class id is in the first
                                        (R) channel, the other channels hold instance ids

The class id is read from R. OpenCV returns channels in BGR(A) order, so R is channel 2 of
``cv2.imread(path, cv2.IMREAD_UNCHANGED)``; the full 16-bit value is kept (no uint8 cast).

Evaluation follows the standard protocol: mIoU over the 16 classes SYNTHIA shares with
Cityscapes, and over 13 of them (without wall, fence and pole). Predictions stay in the 19-class
Cityscapes space; terrain, truck and train never occur in the SYNTHIA labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from udaseg.data.base import (
    IMAGE_SUFFIXES,
    ImageLabelDataset,
    file_name_from_entry,
    read_name_list,
)
from udaseg.data.classes import CITYSCAPES_CLASSES

# SYNTHIA class id -> Cityscapes train id; every other id is ignored (255).
SYNTHIA_ID_TO_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13,
    19: 15, 12: 17, 11: 18,
}
# Train ids of the 16 shared classes, and the 13 without wall (3), fence (4) and pole (5).
SYNTHIA_16: list[int] = sorted(SYNTHIA_ID_TO_TRAIN_ID.values())
SYNTHIA_13: list[int] = [train_id for train_id in SYNTHIA_16 if train_id not in (3, 4, 5)]
SYNTHIA_EVAL_SUBSETS: dict[str, list[int]] = {"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13}


class SynthiaRandCityscapes(ImageLabelDataset):
    """SYNTHIA-RAND-CITYSCAPES images with labels in the 19 Cityscapes train ids.

    Args:
        root: the folder holding ``RGB/`` and ``GT/LABELS/``.
        list_file: a text file naming the images to use, one per line ("0000000.png",
            "0000000" or "0"); a relative path is also tried under ``root``. Default: every
            image in ``RGB/``, sorted.
        with_labels: False to never read labels (``GT/LABELS/`` is then not required).
    """

    class_names = CITYSCAPES_CLASSES
    id_to_train_id = SYNTHIA_ID_TO_TRAIN_ID
    max_raw_id = 65535
    layout = ("{root}/RGB/0000000.png ... and {root}/GT/LABELS/0000000.png ... "
              "(SYNTHIA-RAND-CITYSCAPES layout: 16-bit multi-channel label PNGs)")

    def __init__(self, root: str, list_file: Optional[str] = None,
                 with_labels: bool = True) -> None:
        self.list_file = list_file
        self.eval_subsets = {key: list(ids) for key, ids in SYNTHIA_EVAL_SUBSETS.items()}
        super().__init__(root, "all" if list_file is None else "list", with_labels)

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        images, labels = self.root / "RGB", self.root / "GT" / "LABELS"
        self.require_dirs(images, *([labels] if self.has_labels else []))
        present = set(os.listdir(images))
        if self.list_file is None:
            names = sorted(name for name in present
                           if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        else:
            entries = read_name_list(self.list_file, self.root)
            names = [file_name_from_entry(entry, 7) for entry in entries]
            for name in names:
                if name not in present:
                    raise FileNotFoundError(f"SynthiaRandCityscapes: {self.list_file} names "
                                            f"{name}, but image {images / name} does not exist")
        return self.pair_by_stem(images, labels, names)

    def read_label_ids(self, path: Path) -> np.ndarray:
        """The R channel (class id) of the 16-bit label PNG, as uint16."""
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise OSError(f"cannot read label file {path}")
        if label.ndim == 2:
            return label
        if label.ndim == 3 and label.shape[2] in (3, 4):
            return np.ascontiguousarray(label[:, :, 2])  # BGR(A): R is channel 2
        raise ValueError(f"label file {path} has shape {label.shape}; expected a 3-channel "
                         "(or 4-channel) 16-bit PNG with the class id in R")
