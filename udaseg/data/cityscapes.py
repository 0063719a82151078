"""Cityscapes (Cordts et al. 2016): the real target of GTA5/SYNTHIA -> Cityscapes.

Layout of ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip`` unpacked into one root::

    <root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png   RGB
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     8-bit ids

Only ``*_gtFine_labelIds.png`` is read (the ``_color``, ``_instanceIds`` and ``_polygons.json``
files next to it are ignored); ids map to the 19 train ids with the official table. Samples are
ordered by (city, file name). 2,975 train / 500 val / 1,525 test images; the test labels are
withheld (the released ``gtFine/test`` files are placeholders), so the test split is image-only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Optional

from udaseg.data.base import ImageLabelDataset
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX

CityscapesSplit = Literal["train", "val", "test"]
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def validate_subsets(subsets: Mapping[str, Sequence[int]], num_classes: int,
                     owner: str) -> dict[str, list[int]]:
    """Copy of `subsets` after checking every id is a valid, non-repeated train id."""
    checked: dict[str, list[int]] = {}
    for name, ids in subsets.items():
        ids = [int(train_id) for train_id in ids]
        if not ids:
            raise ValueError(f"{owner}: eval subset {name!r} is empty")
        bad = [train_id for train_id in ids if not 0 <= train_id < num_classes]
        if bad:
            raise ValueError(f"{owner}: eval subset {name!r} has ids {bad} outside "
                             f"0..{num_classes - 1}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{owner}: eval subset {name!r} repeats ids: {ids}")
        checked[name] = ids
    if not checked:
        raise ValueError(f"{owner}: eval_subsets must name at least one subset")
    return checked


class Cityscapes(ImageLabelDataset):
    """Cityscapes fine annotations in the 19 train ids.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train", "val" or "test". UDA trains on the unlabelled "train" images and
            reports on "val" at full 2048x1024 label resolution. "test" has no public labels,
            so it requires ``with_labels=False``.
        with_labels: False to never read labels (``gtFine/`` is then not required).
        eval_subsets: the class subsets to report mIoU over; default {"mIoU-19": all 19}. A
            SYNTHIA -> Cityscapes config passes ``{"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13}``
            (from ``udaseg.data.synthia``).
        label_classes: train ids kept in the labels; every other class becomes 255 (ignored).
            The SYNTHIA -> Cityscapes protocol of the official code (e.g. MaxSquareLoss's
            16-class mode) ignores the pixels of the 3 classes SYNTHIA lacks, so that they
            count neither for nor against the 16 evaluated classes: pass ``SYNTHIA_16`` there.
            Default: all 19.
    """

    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str, split: CityscapesSplit = "train", with_labels: bool = True,
                 eval_subsets: Optional[dict[str, list[int]]] = None,
                 label_classes: Optional[list[int]] = None) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Cityscapes: split must be 'train', 'val' or 'test', got {split!r}")
        if split == "test" and with_labels:
            raise ValueError("Cityscapes: the test split has no public labels (gtFine/test holds "
                             "placeholders); use with_labels=False, or evaluate on split='val'")
        num_classes = len(CITYSCAPES_CLASSES)
        self.eval_subsets = validate_subsets(
            eval_subsets if eval_subsets is not None else {"mIoU-19": list(range(num_classes))},
            num_classes, "Cityscapes")
        table = dict(CITYSCAPES_ID_TO_TRAIN_ID)
        if label_classes is not None:
            keep = validate_subsets({"label_classes": label_classes}, num_classes,
                                    "Cityscapes")["label_classes"]
            table = {raw: (train if train in keep else IGNORE_INDEX)
                     for raw, train in table.items()}
        self.id_to_train_id = table
        self.layout = (f"{{root}}/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>{_IMAGE_SUFFIX}"
                       + (f" and {{root}}/gtFine/{split}/<city>/<city>_<seq>_<frame>"
                          f"{_LABEL_SUFFIX}" if with_labels else "")
                       + " (Cityscapes layout)")
        super().__init__(root, split, with_labels)

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        images = self.root / "leftImg8bit" / self.split
        labels = self.root / "gtFine" / self.split
        self.require_dirs(images, *([labels] if self.has_labels else []))
        pairs: list[tuple[Path, Optional[Path]]] = []
        for city in sorted(entry.name for entry in os.scandir(images) if entry.is_dir()):
            names = sorted(name for name in os.listdir(images / city)
                           if name.endswith(_IMAGE_SUFFIX))
            label_names: set[str] = set()
            if self.has_labels and names:
                label_names = set(os.listdir(labels / city)) if (labels / city).is_dir() else set()
            for name in names:
                label: Optional[Path] = None
                if self.has_labels:
                    label_name = name[:-len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX
                    label = labels / city / label_name
                    if label_name not in label_names:
                        raise self.missing_label(images / city / name, label)
                pairs.append((images / city / name, label))
        return pairs
