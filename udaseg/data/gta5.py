"""GTA5 ("Playing for Data", Richter et al. 2016): the synthetic source of GTA5 -> Cityscapes.

Layout of the release (24,966 pairs)::

    <root>/images/00001.png ... 24966.png   RGB, mostly 1914x1052
    <root>/labels/00001.png ... 24966.png   palette ("P") PNGs; the palette *indices* are
                                            Cityscapes label ids (the palette only colours them)
    <root>/split.mat                        optional: the release's split (trainIds, valIds, ...)

Labels are read as raw palette indices (never through a reader that applies the palette) and
mapped with the Cityscapes label-id -> train-id table. A few labels differ in size from their
image; the base class resizes those (nearest neighbour) with a warning naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from udaseg.data.base import (
    IMAGE_SUFFIXES,
    ImageLabelDataset,
    file_name_from_entry,
    read_index_png,
    read_name_list,
)
from udaseg.data.classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID

GTA5Split = Literal["all", "train", "val"]


class GTA5(ImageLabelDataset):
    """GTA5 images with labels in the 19 Cityscapes train ids.

    Args:
        root: the folder holding ``images/`` and ``labels/``.
        split: "all" (every image in ``images/``, sorted), or "train" / "val" read from the
            release's ``<root>/split.mat`` (keys ``trainIds`` / ``valIds``; needs scipy).
            UDA papers train on "all" (ADVENT, AdaptSegNet) or on a list file.
        list_file: a text file naming the images to use, one per line ("00001.png", "00001"
            or "1"), like the common ``train.txt``; a relative path is also tried under
            ``root``. Overrides ``split``'s own selection.
        with_labels: False to never read labels (``labels/`` is then not required).
    """

    class_names = CITYSCAPES_CLASSES
    id_to_train_id = CITYSCAPES_ID_TO_TRAIN_ID
    layout = ("{root}/images/00001.png ... and {root}/labels/00001.png ... "
              "(GTA5 layout: RGB images, palette-PNG labels holding Cityscapes label ids)")

    def __init__(self, root: str, split: GTA5Split = "all", list_file: Optional[str] = None,
                 with_labels: bool = True) -> None:
        if split not in ("all", "train", "val"):
            raise ValueError(f"GTA5: split must be 'all', 'train' or 'val', got {split!r}")
        self.list_file = list_file
        self.eval_subsets = {"mIoU-19": list(range(len(CITYSCAPES_CLASSES)))}
        super().__init__(root, split, with_labels)

    def selected_names(self, images: Path) -> list[str]:
        if self.list_file is not None:
            entries = read_name_list(self.list_file, self.root)
            return [file_name_from_entry(entry, 5) for entry in entries]
        if self.split == "all":
            return sorted(name for name in os.listdir(images)
                          if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        split_file = self.root / "split.mat"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"GTA5: split {self.split!r} is read from {split_file} (the split file of the "
                "GTA5 release, keys trainIds/valIds), which does not exist; pass list_file=... "
                "or use split='all'")
        try:
            from scipy.io import loadmat
        except ImportError as error:  # scipy is not a core dependency
            raise ImportError(f"GTA5: reading {split_file} needs scipy; install it or pass "
                              "list_file=...") from error
        key = f"{self.split}Ids"
        splits = loadmat(str(split_file))
        if key not in splits:
            raise KeyError(f"GTA5: {split_file} has no {key!r} entry "
                           f"(has {sorted(k for k in splits if not k.startswith('__'))})")
        return [f"{int(index):05d}.png" for index in np.asarray(splits[key]).ravel()]

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        images, labels = self.root / "images", self.root / "labels"
        self.require_dirs(images, *([labels] if self.has_labels else []))
        names = self.selected_names(images)
        if self.list_file is not None or self.split != "all":
            present = set(os.listdir(images))
            for name in names:
                if name not in present:
                    source = self.list_file if self.list_file is not None else "split.mat"
                    raise FileNotFoundError(f"GTA5: {source} names {name}, but image "
                                            f"{images / name} does not exist")
        return self.pair_by_stem(images, labels, names)

    def read_label_ids(self, path: Path) -> np.ndarray:
        """The palette indices of the label PNG (= Cityscapes label ids)."""
        return read_index_png(path)
