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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from udaseg.data.base import ImageLabelDataset
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, IGNORE_INDEX
from udaseg.data.synthia import SYNTHIA_13, SYNTHIA_16

CityscapesSplit = Literal["train", "val", "test"]
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class EvaluationProtocol:
    """What a Cityscapes evaluation reports and which label classes it keeps.

    Args:
        eval_subsets: named train-id subsets to report mIoU over.
        label_classes: train ids kept in the labels (every other class becomes 255, ignored);
            None keeps all 19.
    """

    eval_subsets: dict[str, list[int]]
    label_classes: Optional[list[int]] = None


#: The evaluation protocols of the papers, chosen by name (`Cityscapes(protocol=...)`).
#: "synthia-16": SYNTHIA -> Cityscapes reports mIoU over the 16 classes SYNTHIA shares with
#: Cityscapes and over 13 of them (without wall, fence, pole), and, as the official code does
#: (e.g. MaxSquareLoss's 16-class mode), ignores the pixels of the 3 classes SYNTHIA lacks, so
#: they count neither for nor against the 16 evaluated ones.
PROTOCOLS: dict[str, EvaluationProtocol] = {
    "cityscapes-19": EvaluationProtocol({"mIoU-19": list(range(len(CITYSCAPES_CLASSES)))}),
    "synthia-16": EvaluationProtocol({"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13},
                                     label_classes=SYNTHIA_16),
}
Protocol = Literal["cityscapes-19", "synthia-16"]


class Cityscapes(ImageLabelDataset):
    """Cityscapes fine annotations in the 19 train ids.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train", "val" or "test". UDA trains on the unlabelled "train" images and
            reports on "val" at full 2048x1024 label resolution. "test" has no public labels,
            so it requires ``with_labels=False``.
        with_labels: False to never read labels (``gtFine/`` is then not required).
        protocol: the evaluation protocol, by name from `PROTOCOLS`: "cityscapes-19"
            (GTA5 -> Cityscapes: mIoU-19) or "synthia-16" (SYNTHIA -> Cityscapes: mIoU-16 and
            mIoU-13, the 3 classes SYNTHIA lacks ignored).
    """

    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str, split: CityscapesSplit = "train", with_labels: bool = True,
                 protocol: Protocol = "cityscapes-19") -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Cityscapes: split must be 'train', 'val' or 'test', got {split!r}")
        if split == "test" and with_labels:
            raise ValueError("Cityscapes: the test split has no public labels (gtFine/test holds "
                             "placeholders); use with_labels=False, or evaluate on split='val'")
        if protocol not in PROTOCOLS:
            raise ValueError(f"Cityscapes: protocol must be one of {sorted(PROTOCOLS)}, "
                             f"got {protocol!r}")
        chosen = PROTOCOLS[protocol]
        self.protocol = protocol
        self.eval_subsets = {name: list(ids) for name, ids in chosen.eval_subsets.items()}
        table = dict(CITYSCAPES_ID_TO_TRAIN_ID)
        if chosen.label_classes is not None:
            table = {raw: (train if train in chosen.label_classes else IGNORE_INDEX)
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
