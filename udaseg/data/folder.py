"""A user's own dataset, described in the config: image and label files found by a glob (or a
list file) and a label-space file, no Python.

The label-space file (YAML or JSON) names the classes and maps the raw values stored in the
label PNGs to train ids; raw values it does not list are ignored (255):

    classes: [road, sidewalk, building, ...]      # train ids 0, 1, 2, ...
    id_to_train_id: {7: 0, 8: 1, 11: 2, ...}       # optional: identity for 0..C-1 without it
    eval_subsets: {mIoU-small: [6, 7, 8]}          # optional: mIoU over all classes is added

Labels are single-channel PNGs: grey (8 or 16 bit) or palette images, whose *indices* are read
(the palette only colours them). Class colours follow the class names, as everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from udaseg.data.base import ImageLabelDataset, read_index_png, read_name_list

#: Raw label values a label-space file may map (16-bit grey PNGs).
MAX_RAW_ID = 65535


def read_label_space(path: str | Path) -> dict:
    """The label-space file as {"classes", "id_to_train_id", "eval_subsets"}, checked, with
    errors that name the file and the key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"label-space file {path} not found")
    try:
        content = (json.loads(path.read_text()) if path.suffix == ".json"
                   else yaml.safe_load(path.read_text()))
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"label-space file {path} is not valid "
                         f"{'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from error
    if not isinstance(content, Mapping):
        raise ValueError(f"label-space file {path}: expected a mapping with 'classes'")
    classes = content.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(name, str)
                                                               for name in classes):
        raise ValueError(f"label-space file {path}: 'classes' must be a list of class names")
    table = content.get("id_to_train_id")
    if table is None:
        table = {index: index for index in range(len(classes))}
    if not isinstance(table, Mapping):
        raise ValueError(f"label-space file {path}: 'id_to_train_id' must map raw label values "
                         "to train ids")
    mapping = {}
    for raw, train in table.items():
        if not (str(raw).isdigit() and 0 <= int(raw) <= MAX_RAW_ID):
            raise ValueError(f"label-space file {path}: raw label value {raw!r} in "
                             f"'id_to_train_id' is not an integer in 0..{MAX_RAW_ID}")
        if not (isinstance(train, int) and (0 <= train < len(classes) or train == 255)):
            raise ValueError(f"label-space file {path}: raw value {raw} maps to {train!r}, "
                             f"expected a train id in 0..{len(classes) - 1} or 255 (ignore)")
        mapping[int(raw)] = train
    subsets = content.get("eval_subsets") or {}
    for name, members in subsets.items():
        if not all(isinstance(member, int) and 0 <= member < len(classes)
                   for member in members):
            raise ValueError(f"label-space file {path}: eval_subsets.{name} must list train "
                             f"ids in 0..{len(classes) - 1}")
    return {"classes": tuple(classes), "id_to_train_id": mapping,
            "eval_subsets": {"mIoU": list(range(len(classes))), **subsets}}


class LabelledFolder(ImageLabelDataset):
    """Images and labels of one split, found by patterns under `root`.

    Args:
        root: the dataset folder; relative paths live under $UDASEG_DATA_ROOT (as every root).
        label_space: YAML/JSON file of class names and the raw-value table (module docstring);
            a relative path is tried as given, then under `root`.
        images: glob of the split's image files under `root`, e.g. "images/train/*.jpg".
        labels: the label file of each image, relative to `root`: a pattern with `{stem}` (the
            image's file name without suffix) and `{parent}` (the name of its folder, e.g. a
            city), e.g. "labels/{parent}/{stem}_label.png". Not needed with `with_labels:
            false`.
        list_file: instead of `images`, a file listing the split's images (paths relative to
            `root`, one per line; relative to the working directory or to `root`).
        with_labels: False for an unlabelled (target training) split.
    """

    layout = ("images matched by `images` (or listed in `list_file`) under {root}, each with "
              "the label file `labels` names")

    def __init__(self, root: str, label_space: str, images: str = "images/*.png",
                 labels: Optional[str] = "labels/{stem}.png", list_file: Optional[str] = None,
                 with_labels: bool = True) -> None:
        if with_labels and not labels:
            raise ValueError("LabelledFolder: a labelled split needs `labels`, the pattern of "
                             "each image's label file (e.g. 'labels/{stem}.png')")
        self.images_pattern, self.labels_pattern, self.list_file = images, labels, list_file
        self.max_raw_id = MAX_RAW_ID
        # The "split" of the base class's messages: what selects this split's images.
        super().__init__(root, list_file or images, with_labels)
        given = Path(label_space).expanduser()
        space = read_label_space(given if given.is_absolute() or given.is_file()
                                 else self.root / given)
        self.class_names = space["classes"]
        self.eval_subsets = space["eval_subsets"]
        self.lookup = self.build_lookup(space["id_to_train_id"], MAX_RAW_ID)

    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        if self.list_file:
            images = [self.root / name for name in read_name_list(self.list_file, self.root)]
            missing = next((path for path in images if not path.is_file()), None)
            if missing is not None:
                raise FileNotFoundError(f"LabelledFolder: {missing}, listed in "
                                        f"{self.list_file}, not found")
        else:
            images = sorted(path for path in self.root.glob(self.images_pattern)
                            if path.is_file())
        pairs: list[tuple[Path, Optional[Path]]] = []
        for image in images:
            if not self.has_labels:
                pairs.append((image, None))
                continue
            label = self.root / self.labels_pattern.format(stem=image.stem,
                                                           parent=image.parent.name)
            if not label.is_file():
                raise self.missing_label(image, label)
            pairs.append((image, label))
        return pairs

    def read_label_ids(self, path: Path) -> np.ndarray:
        """Raw values of a grey or palette label PNG (palette indices, never colours)."""
        return read_index_png(path)
