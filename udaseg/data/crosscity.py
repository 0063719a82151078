"""NTHU Cross-City (Chen et al., ICCV 2017): the targets of Cityscapes -> {Rome, Rio, Tokyo,
Taipei}.

Layout (as read by the MaxSquareLoss code, ``datasets/crosscity_Dataset.py``; its
``NTHU_list/<City>/List/{train,test}.txt`` files list the same image stems)::

    <root>/<City>/Images/Train/<name>.jpg          ~3,200 unlabelled training images per city
    <root>/<City>/Images/Test/<name>.png           100 labelled test images per city
    <root>/<City>/Labels/Test/<name>_eval.png      their labels: Cityscapes *label ids*

Images may be .jpg or .png in either folder (the official loader tries both). The ``_eval.png``
labels hold Cityscapes label ids (the official loader maps them with the Cityscapes id ->
train-id table); only 13 classes are annotated and evaluated, and, as in the official 13-class
mode, pixels of any other class are ignored (255). Predictions stay in the 19-class space.

Splits: "train" is the unlabelled adaptation set; "test" is the 100 labelled images per city
that papers report on. MaxSquareLoss calls this folder its *val* split; it is the same 100 test
images. The dataset has no separate validation split: any held-out selection set must be cut
from "train" images (unlabelled) or be another dataset, never these test images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from udaseg.data.base import (
    IMAGE_SUFFIXES,
    ImageLabelDataset,
    read_index_png,
    read_name_list,
)
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID

City = Literal["Rome", "Rio", "Tokyo", "Taipei"]
CrossCitySplit = Literal["train", "test"]
CITIES: tuple[str, ...] = ("Rome", "Rio", "Tokyo", "Taipei")

# Train ids of the 13 annotated classes: road, sidewalk, building, traffic light, traffic sign,
# vegetation, sky, person, rider, car, bus, motorcycle, bicycle.
CROSSCITY_13: list[int] = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
CROSSCITY_ID_TO_TRAIN_ID: dict[int, int] = {
    raw: train for raw, train in CITYSCAPES_ID_TO_TRAIN_ID.items() if train in CROSSCITY_13
}
_LABEL_SUFFIX = "_eval.png"


class CrossCity(ImageLabelDataset):
    """One city of NTHU Cross-City, in the 19 Cityscapes train ids (13 of them annotated).

    Args:
        root: the folder holding the city folders (``Rome/``, ``Rio/``, ...), e.g.
            ``NTHU_Datasets``.
        city: "Rome", "Rio", "Tokyo" or "Taipei".
        split: "train" (unlabelled; needs ``with_labels=False``) or "test" (the 100 labelled
            images per city that papers report on; MaxSquareLoss calls it "val").
        with_labels: must be False for "train".
        list_file: optional text file of image stems (e.g. MaxSquareLoss's
            ``NTHU_list/<City>/List/test.txt``); default: every image in the folder, sorted.
    """

    class_names = CITYSCAPES_CLASSES
    id_to_train_id = CROSSCITY_ID_TO_TRAIN_ID

    def __init__(self, root: str, city: City, split: CrossCitySplit = "train",
                 with_labels: bool = True, list_file: Optional[str] = None) -> None:
        if city not in CITIES:
            raise ValueError(f"CrossCity: city must be one of {list(CITIES)}, got {city!r}")
        if split not in ("train", "test"):
            raise ValueError(f"CrossCity: split must be 'train' or 'test', got {split!r} (the "
                             "labelled evaluation set, which MaxSquareLoss calls 'val', is "
                             "'test')")
        if split == "train" and with_labels:
            raise ValueError(f"CrossCity: the {city} train split is unlabelled; pass "
                             "with_labels=False (labelled images: split='test')")
        self.city = city
        self.list_file = list_file
        self.eval_subsets = {"mIoU-13": list(CROSSCITY_13)}
        folder = split.capitalize()
        self.layout = (f"{{root}}/{city}/Images/{folder}/<name>.jpg|.png"
                       + (f" and {{root}}/{city}/Labels/{folder}/<name>{_LABEL_SUFFIX}"
                          if with_labels else "")
                       + " (NTHU Cross-City layout; root is the folder holding the city folders)")
        super().__init__(root, split, with_labels)

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        folder = self.split.capitalize()
        images = self.root / self.city / "Images" / folder
        labels = self.root / self.city / "Labels" / folder
        self.require_dirs(images, *([labels] if self.has_labels else []))
        files = sorted(name for name in os.listdir(images)
                       if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        if self.list_file is not None:
            by_stem: dict[str, str] = {}
            for name in files:
                by_stem.setdefault(Path(name).stem, name)
            files = []
            for entry in read_name_list(self.list_file, self.root):
                stem = Path(entry).stem if Path(entry).suffix.lower() in IMAGE_SUFFIXES else entry
                stem = Path(stem).name
                if stem not in by_stem:
                    raise FileNotFoundError(f"CrossCity: {self.list_file} names {entry}, but "
                                            f"no image {images / stem}.jpg or .png exists")
                files.append(by_stem[stem])
        label_names = set(os.listdir(labels)) if self.has_labels else set()
        pairs: list[tuple[Path, Optional[Path]]] = []
        for name in files:
            label: Optional[Path] = None
            if self.has_labels:
                label_name = Path(name).stem + _LABEL_SUFFIX
                label = labels / label_name
                if label_name not in label_names:
                    raise self.missing_label(images / name, label)
            pairs.append((images / name, label))
        return pairs

    def read_label_ids(self, path: Path) -> np.ndarray:
        """Raw values of the ``_eval.png`` label (grey or palette PNG of Cityscapes label ids)."""
        return read_index_png(path)
