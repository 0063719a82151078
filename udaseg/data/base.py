"""Dataset base classes.

Every dataset returns raw samples: `{"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 train
ids with 255 = ignore (absent when the split has no labels), "name": str}`. Augmentation and
normalisation are applied per stream by the data module, so one dataset class serves as source,
target and evaluation set.
"""

from __future__ import annotations

import abc
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image

from udaseg.data.classes import IGNORE_INDEX, palette_for

DATA_ROOT_VARIABLE = "UDASEG_DATA_ROOT"


def resolve_root(root: str) -> Path:
    """An absolute root is used as is; a relative one lives under $UDASEG_DATA_ROOT (default
    `./data`), so configs say `root: GTA5` and one variable moves every dataset."""
    path = Path(root).expanduser()
    if path.is_absolute():
        return path
    return Path(os.environ.get(DATA_ROOT_VARIABLE, "data")).expanduser() / path


class SegmentationDataset(torch.utils.data.Dataset, abc.ABC):
    """What the data module needs from a dataset, beyond `__len__` / `__getitem__`.

    Attributes:
        class_names: names of the train ids 0..C-1 (the prediction space).
        palette: colour of each train id (by class name unless a dataset overrides it).
        eval_subsets: named class subsets to report mIoU over, e.g. {"mIoU-16": [...]}.
        has_labels: whether samples carry a "label".
    """

    class_names: tuple[str, ...] = ()
    eval_subsets: dict[str, list[int]] = {}
    has_labels: bool = True

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8 RGB colour of each train id for figures and predictions: the colour of
        its class name (Cityscapes convention); override to give a dataset its own."""
        return palette_for(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> dict: ...

    def label(self, index: int) -> np.ndarray:
        """The (H, W) train-id label of sample `index` alone (e.g. for rare class sampling's
        class index). Default: the sample's "label"; datasets that can read a label without
        decoding its image override this."""
        return self[index]["label"]


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError) as error:
        raise OSError(f"cannot read image file {path}: {error}") from error
    return height, width


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
    # One line describing the expected file layout, quoted in error messages.
    layout: str = ""

    def __init__(self, root: str, split: str = "train", with_labels: bool = True) -> None:
        self.root = resolve_root(root)
        self.split = split
        self.has_labels = with_labels
        self.lookup = self.build_lookup(self.id_to_train_id, self.max_raw_id)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: dataset root {self.root} does not "
                                    f"exist or is not a folder{self.expected_layout()}")
        self.pairs = self.list_pairs()
        if not self.pairs:
            raise ValueError(f"{type(self).__name__}: split {split!r} under {self.root} "
                             f"contains no images{self.expected_layout()}")

    def expected_layout(self) -> str:
        """'; expected <layout>' for error messages, or '' when the subclass gives none."""
        if not self.layout:
            return ""
        return "; expected " + self.layout.replace("{root}", str(self.root))

    def require_dirs(self, *folders: Path) -> None:
        """Raise a clear error naming the first missing folder and the expected layout."""
        for folder in folders:
            if not folder.is_dir():
                raise FileNotFoundError(f"{type(self).__name__}: folder {folder} not found"
                                        f"{self.expected_layout()}")

    def missing_label(self, image: Path, label: Path) -> FileNotFoundError:
        return FileNotFoundError(f"{type(self).__name__}: image {image} has no label file "
                                 f"(expected {label}){self.expected_layout()}")

    def pair_by_stem(self, images: Path, labels: Path,
                     names: Sequence[str]) -> list[tuple[Path, Optional[Path]]]:
        """Pair `images/<name>` with `labels/<stem>.png` (GTA5, SYNTHIA layouts)."""
        label_names = set(os.listdir(labels)) if self.has_labels else set()
        pairs: list[tuple[Path, Optional[Path]]] = []
        for name in names:
            label_name = Path(name).with_suffix(".png").name
            if self.has_labels and label_name not in label_names:
                raise self.missing_label(images / name, labels / label_name)
            pairs.append((images / name, labels / label_name if self.has_labels else None))
        return pairs

    @abc.abstractmethod
    def list_pairs(self) -> list[tuple[Path, Optional[Path]]]:
        """(image path, label path or None) for every sample of the split, in a fixed order."""

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
        image_path, _ = self.pairs[index]
        sample = {"image": self.read_image(image_path), "name": image_path.stem}
        if self.has_labels:
            sample["label"] = self.train_ids(index, sample["image"].shape[:2])
        return sample

    def label(self, index: int) -> np.ndarray:
        """The label alone, at its image's size read from the image header (no decoding)."""
        return self.train_ids(index, read_image_size(self.pairs[index][0]))

    def full_resolution_label(self, index: int) -> np.ndarray:
        """The label at its file's own size, even where that differs from its image's: what
        rare class sampling counts class pixels in, as DAFormer counts them in the files."""
        return self.train_ids(index, None)

    def train_ids(self, index: int, image_size: Optional[tuple[int, int]]) -> np.ndarray:
        """Train ids of sample `index`, at `image_size` (height, width) of its image (None:
        at the label file's size)."""
        image_path, label_path = self.pairs[index]
        if label_path is None:
            raise ValueError(f"{image_path} has no label file")
        raw = self.read_label_ids(label_path)
        if raw.max(initial=0) > self.max_raw_id:
            raise ValueError(f"label file {label_path} holds id {int(raw.max())} > "
                             f"{self.max_raw_id}, the largest this dataset expects")
        label = self.lookup[raw]
        if image_size is None:
            return label
        height, width = image_size
        if label.shape != (height, width):
            # Known in GTA5: a few labels differ in size from their image.
            warnings.warn(f"label {label_path} is {label.shape[1]}x{label.shape[0]}, image "
                          f"is {width}x{height}; resizing the label (nearest)", stacklevel=3)
            label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        return label


def read_index_png(path: Path) -> np.ndarray:
    """Raw values (H, W) of a single-channel label PNG: the indices of a palette ("P") image,
    the values of a grey ("L", "I;16", "I") one. The palette is never applied (OpenCV would
    expand it to colours)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
                raise ValueError(f"label file {path} is a {image.mode!r} image; expected a "
                                 "single-channel palette or grey PNG of label ids")
            ids = np.asarray(image)
    except (OSError, SyntaxError) as error:  # PIL reports some corrupt PNGs as SyntaxError
        raise OSError(f"cannot read label file {path}: {error}") from error
    if ids.dtype.kind == "i":
        if ids.size and ids.min() < 0:
            raise ValueError(f"label file {path} holds negative ids")
        ids = ids.astype(np.uint16 if ids.max(initial=0) <= 65535 else np.int64)
    return ids


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def file_name_from_entry(entry: str, digits: int) -> str:
    """A split-list entry -> a file name: "00001.png" and "images/00001.png" stay "00001.png";
    a bare number is zero-padded to `digits` ("1" -> "00001.png"); other stems get ".png"."""
    name = Path(entry).name
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return name
    return f"{int(name):0{digits}d}.png" if name.isdigit() else f"{name}.png"


def read_name_list(list_file: str | Path, root: Path) -> list[str]:
    """Non-empty, stripped lines of a split list (a relative path is tried as given, then
    under the dataset root)."""
    given = Path(list_file).expanduser()
    candidates = [given] if given.is_absolute() else [given, root / given]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"list file {list_file} not found (tried "
                                f"{', '.join(str(candidate) for candidate in candidates)})")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise ValueError(f"list file {path} names no images")
    return names


class ImageFolder(SegmentationDataset):
    """Unlabelled images in a folder (sorted), for `udaseg predict`.

    Args:
        root: the folder. A relative path is looked up in the working directory first (a user's
            own folder), then under $UDASEG_DATA_ROOT like every dataset root; the error names
            both places.
        pattern: glob of the image files, e.g. "*.png" or "**/*_leftImg8bit.png".
    """

    has_labels = False

    def __init__(self, root: str, pattern: str = "*.png") -> None:
        given = Path(root).expanduser()
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, resolve_root(root)]
        found = next((path for path in candidates if path.is_dir()), None)
        if found is None:
            raise FileNotFoundError(
                f"ImageFolder: folder {root!r} not found (looked for "
                + " and ".join(str(path) for path in candidates) + ")")
        self.root = found
        self.paths = sorted(path for path in self.root.glob(pattern) if path.is_file())
        if not self.paths:
            raise ValueError(f"ImageFolder: no file matches {pattern!r} under {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": ImageLabelDataset.read_image(path),
                "name": str(path.relative_to(self.root).with_suffix(""))}

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, from the file headers (no decoding)."""
        return [read_image_size(path) for path in self.paths]


def check_same_classes(datasets: Sequence[tuple[str, SegmentationDataset]]) -> tuple[str, ...]:
    """All streams must predict in the same label space; say which one differs if not."""
    (first_key, first), *rest = datasets
    for key, dataset in rest:
        if tuple(dataset.class_names) != tuple(first.class_names):
            raise ValueError(f"data.{key} ({type(dataset).__name__}) has classes "
                             f"{list(dataset.class_names)}, but data.{first_key} "
                             f"({type(first).__name__}) has {list(first.class_names)}")
    return tuple(first.class_names)
