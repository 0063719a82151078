"""Dataset base classes.

Every dataset returns raw samples: `{"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 train
ids with 255 = ignore (absent when the split has no labels), "name": str}`. Augmentation and
normalisation are applied per stream by the data module, so one dataset class serves as source,
target and evaluation set.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from udaseg.data.classes import IGNORE_INDEX


class SegmentationDataset(torch.utils.data.Dataset):
    """What the data module needs from a dataset, beyond `__len__` / `__getitem__`.

    Attributes:
        class_names: names of the train ids 0..C-1 (the prediction space).
        eval_subsets: named class subsets to report mIoU over, e.g. {"mIoU-16": [...]}.
        has_labels: whether samples carry a "label".
    """

    class_names: tuple[str, ...] = ()
    eval_subsets: dict[str, list[int]] = {}
    has_labels: bool = True

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError


class ImageLabelDataset(SegmentationDataset):
    """Image files + label files + a raw-id → train-id table.

    Subclasses (GTA5, SYNTHIA, Cityscapes, Cross-City) provide `list_pairs` (the file layout),
    `id_to_train_id` and, where the label encoding is unusual, `read_label_ids`.

    Args:
        root: dataset root folder.
        split: split name understood by the subclass.
        with_labels: False for the unlabelled target stream (labels are then never read).
    """

    id_to_train_id: Mapping[int, int] = {}
    # The biggest raw id the label files can hold (SYNTHIA's 16-bit ids need 65535).
    max_raw_id: int = 255

    def __init__(self, root: str, split: str = "train", with_labels: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.has_labels = with_labels
        self.lookup = self.build_lookup(self.id_to_train_id, self.max_raw_id)
        self.pairs = self.list_pairs()
        if not self.pairs:
            raise ValueError(f"{type(self).__name__}: split {split!r} under {self.root} "
                             "contains no images")

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        """(image path, label path or None) for every sample of the split, in a fixed order."""
        raise NotImplementedError

    @staticmethod
    def build_lookup(table: Mapping[int, int], max_raw_id: int) -> np.ndarray:
        lookup = np.full(max_raw_id + 1, IGNORE_INDEX, dtype=np.uint8)
        for raw_id, train_id in table.items():
            lookup[raw_id] = train_id
        return lookup

    @staticmethod
    def read_image(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image file {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def read_label_ids(self, path: Path) -> np.ndarray:
        """Raw label ids (H, W). Default: a single-channel 8-bit PNG read without any palette."""
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise OSError(f"cannot read label file {path}")
        if label.ndim != 2:
            raise ValueError(f"label file {path} has {label.shape[2]} channels, expected 1")
        return label

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.pairs[index]
        sample = {"image": self.read_image(image_path), "name": image_path.stem}
        if self.has_labels:
            if label_path is None:
                raise ValueError(f"{image_path} has no label file")
            raw = self.read_label_ids(label_path)
            if raw.max(initial=0) > self.max_raw_id:
                raise ValueError(f"label file {label_path} holds id {int(raw.max())} > "
                                 f"{self.max_raw_id}, the largest this dataset expects")
            label = self.lookup[raw]
            height, width = sample["image"].shape[:2]
            if label.shape != (height, width):
                # Known in GTA5: a few labels differ in size from their image.
                warnings.warn(f"label {label_path} is {label.shape[1]}x{label.shape[0]}, image "
                              f"is {width}x{height}; resizing the label (nearest)", stacklevel=2)
                label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
            sample["label"] = label
        return sample


def check_same_classes(datasets: Sequence[tuple[str, SegmentationDataset]]) -> tuple[str, ...]:
    """All streams must predict in the same label space; say which one differs if not."""
    (first_key, first), *rest = datasets
    for key, dataset in rest:
        if tuple(dataset.class_names) != tuple(first.class_names):
            raise ValueError(f"data.{key} ({type(dataset).__name__}) has classes "
                             f"{list(dataset.class_names)}, but data.{first_key} "
                             f"({type(first).__name__}) has {list(first.class_names)}")
    return tuple(first.class_names)
