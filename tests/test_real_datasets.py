"""Real dataset loaders on tiny trees written in exactly the published formats."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from udaseg.data.base import IGNORE_INDEX
from udaseg.data.cityscapes import Cityscapes
from udaseg.data.classes import CITYSCAPES_CLASSES
from udaseg.data.crosscity import CROSSCITY_13, CrossCity
from udaseg.data.datamodule import UDADataModule
from udaseg.data.gta5 import GTA5
from udaseg.data.synthia import SYNTHIA_13, SYNTHIA_16, SynthiaRandCityscapes
from udaseg.data.transforms import Augmentation, TransformedDataset

H, W = 6, 8
X = IGNORE_INDEX
COLOUR = (200, 30, 90)  # a known RGB colour with R != B, so a BGR/RGB swap shows


def rgb_image(colour=COLOUR, height=H, width=W) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = colour
    image[0, 0] = (1, 2, 3)  # one distinct pixel: orientation and channel order
    return image


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path)  # PIL writes RGB as RGB


def palette_png(path: Path, ids: np.ndarray) -> None:
    """A GTA5-style label: mode "P", pixel values = label ids, a colour palette attached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), "P")
    rng = np.random.default_rng(0)
    image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"


def grey_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


# Cityscapes label ids and their expected train ids (0 unlabelled, 34 and 1 unmapped).
CITY_IDS = np.array([
    [7, 8, 11, 12, 13, 17, 19, 20],
    [21, 22, 23, 24, 25, 26, 27, 28],
    [31, 32, 33, 0, 1, 34, 7, 7],
    [26, 26, 26, 26, 23, 23, 23, 23],
    [8, 8, 8, 8, 8, 8, 8, 8],
    [7, 7, 7, 7, 7, 7, 7, 7],
], np.uint8)
CITY_TRAIN = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7],
    [8, 9, 10, 11, 12, 13, 14, 15],
    [16, 17, 18, X, X, X, 0, 0],
    [13, 13, 13, 13, 10, 10, 10, 10],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


# ------------------------------------------------------------------------------------- GTA5


@pytest.fixture
def gta5_root(tmp_path) -> Path:
    root = tmp_path / "GTA5"
    write_rgb(root / "images" / "00001.png", rgb_image())
    palette_png(root / "labels" / "00001.png", CITY_IDS)
    # A pair whose label is half the image size (happens in the release).
    write_rgb(root / "images" / "00002.png", rgb_image((10, 20, 250)))
    palette_png(root / "labels" / "00002.png", np.array([[7, 26, 24, 0],
                                                         [23, 23, 8, 33],
                                                         [8, 8, 8, 255]]))
    write_rgb(root / "images" / "00003.png", rgb_image((0, 255, 0)))
    palette_png(root / "labels" / "00003.png", np.full((H, W), 21))
    return root


def test_gta5_reads_palette_indices_as_label_ids(gta5_root):
    data = GTA5(str(gta5_root))
    assert len(data) == 3 and data.has_labels
    sample = data[0]
    assert sample["name"] == "00001"
    assert sample["image"].shape == (H, W, 3) and sample["image"].dtype == np.uint8
    assert tuple(sample["image"][1, 1]) == COLOUR and tuple(sample["image"][0, 0]) == (1, 2, 3)
    assert sample["label"].dtype == np.uint8
    np.testing.assert_array_equal(sample["label"], CITY_TRAIN)
    # Control: a palette-applying reader (OpenCV) would have returned colours, not ids.
    assert cv2.imread(str(gta5_root / "labels" / "00001.png")).ndim == 3
    np.testing.assert_array_equal(data[2]["label"], np.full((H, W), 8))


def test_gta5_resizes_mismatched_label_nearest_with_warning(gta5_root):
    data = GTA5(str(gta5_root))
    with pytest.warns(UserWarning, match=re.escape(str(gta5_root / "labels" / "00002.png"))):
        sample = data[1]
    small = np.array([[0, 13, 11, X], [10, 10, 1, 18], [1, 1, 1, X]], np.uint8)
    expected = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(sample["label"], expected)
    assert sample["image"].shape == (H, W, 3)


def test_gta5_class_space_and_subsets(gta5_root):
    data = GTA5(str(gta5_root))
    assert data.class_names == CITYSCAPES_CLASSES and len(data.class_names) == 19
    assert data.eval_subsets == {"mIoU-19": list(range(19))}


@pytest.mark.parametrize("entries", [["00003.png", "00001.png"], ["3", "1"], ["00003", "00001"]])
def test_gta5_list_file(gta5_root, tmp_path, entries):
    list_file = tmp_path / "train.txt"
    list_file.write_text("\n".join(entries) + "\n\n")
    data = GTA5(str(gta5_root), list_file=str(list_file))
    assert [data[i]["name"] for i in range(len(data))] == ["00003", "00001"]


def test_gta5_list_file_relative_to_root_and_missing_entry(gta5_root):
    (gta5_root / "train.txt").write_text("00002.png\n")
    assert len(GTA5(str(gta5_root), list_file="train.txt")) == 1
    (gta5_root / "bad.txt").write_text("00001.png\n00009.png\n")
    with pytest.raises(FileNotFoundError, match=r"names 00009\.png.*images/00009\.png"):
        GTA5(str(gta5_root), list_file="bad.txt")


def test_gta5_split_mat(gta5_root):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(str(gta5_root / "split.mat"),
                     {"trainIds": np.array([[1], [3]]), "valIds": np.array([[2]])})
    assert [p[0].name for p in GTA5(str(gta5_root), "train").pairs] == ["00001.png", "00003.png"]
    assert [p[0].name for p in GTA5(str(gta5_root), "val").pairs] == ["00002.png"]


def test_gta5_train_split_without_split_file_says_what_to_do(gta5_root):
    with pytest.raises(FileNotFoundError, match=r"split\.mat.*list_file"):
        GTA5(str(gta5_root), "train")


def test_gta5_without_labels_needs_no_label_folder(tmp_path):
    root = tmp_path / "GTA5"
    write_rgb(root / "images" / "00001.png", rgb_image())
    sample = GTA5(str(root), with_labels=False)[0]
    assert "label" not in sample and sample["image"].shape == (H, W, 3)


def test_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError,
                       match=re.escape(str(missing)) + r" does not exist.*GTA5 layout"):
        GTA5(str(missing))


def test_gta5_root_without_subfolders(tmp_path):
    (tmp_path / "GTA5" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError,
                       match=re.escape(str(tmp_path / "GTA5" / "labels")) + r" not found; "
                       r"expected .*GTA5/images/00001\.png .* and .*GTA5/labels/00001\.png.*"
                       r"GTA5 layout"):
        GTA5(str(tmp_path / "GTA5"))


def test_gta5_image_without_label(gta5_root):
    (gta5_root / "labels" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(gta5_root / "images" / "00002.png"))
                       + r" has no label file \(expected .*labels/00002\.png\)"):
        GTA5(str(gta5_root))


def test_empty_split(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / "GTA5" / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"split 'all' under .*GTA5 contains no images; expected"):
        GTA5(str(tmp_path / "GTA5"))


def test_corrupt_files_are_named(gta5_root):
    (gta5_root / "labels" / "00001.png").write_bytes(b"not a png at all")
    (gta5_root / "images" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = GTA5(str(gta5_root))
    with pytest.raises(OSError, match="cannot read label file "
                       + re.escape(str(gta5_root / "labels" / "00001.png"))):
        data[0]
    with pytest.raises(OSError, match="cannot read image file "
                       + re.escape(str(gta5_root / "images" / "00003.png"))):
        data[2]


def test_colour_label_is_rejected(gta5_root):
    write_rgb(gta5_root / "labels" / "00001.png", rgb_image())
    with pytest.raises(ValueError, match=r"00001\.png is a 'RGB' image"):
        GTA5(str(gta5_root))[0]


# ------------------------------------------------------------------------------------ SYNTHIA

# SYNTHIA class ids (R channel) -> expected train ids. 259 = 256 + 3 would read as road if the
# 16-bit value were truncated to 8 bits; 14/16/18/20 (and 0) are not in the 16-class table.
SYN_R = np.array([
    [3, 4, 2, 21, 5, 7, 15, 9],
    [6, 1, 10, 17, 8, 19, 12, 11],
    [0, 259, 16, 18, 20, 14, 13, 22],
    [3, 3, 3, 3, 8, 8, 8, 8],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [2, 2, 2, 2, 2, 2, 2, 2],
], np.uint16)
SYN_TRAIN = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7],
    [8, 10, 11, 12, 13, 15, 17, 18],
    [X, X, X, X, X, X, X, X],
    [0, 0, 0, 0, 13, 13, 13, 13],
    [10, 10, 10, 10, 10, 10, 10, 10],
    [2, 2, 2, 2, 2, 2, 2, 2],
], np.uint8)


def synthia_label(path: Path, class_ids: np.ndarray) -> None:
    """A 16-bit 3-channel PNG: class id in R, instance-like junk (also > 255) in G and B."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    bgr = np.zeros(class_ids.shape + (3,), np.uint16)
    bgr[..., 2] = class_ids                                           # R (last in BGR order)
    bgr[..., 1] = rng.integers(256, 5000, class_ids.shape)            # G: instance ids > 255
    bgr[..., 0] = 3                                                   # B: "road" everywhere
    bgr[0, :, 0] = 1000
    assert cv2.imwrite(str(path), bgr)


@pytest.fixture
def synthia_root(tmp_path) -> Path:
    root = tmp_path / "RAND_CITYSCAPES"
    for index in range(3):
        path = root / "RGB" / f"{index:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written with OpenCV, so the RGB colour is passed in BGR order.
        assert cv2.imwrite(str(path), np.ascontiguousarray(rgb_image()[..., ::-1]))
        synthia_label(root / "GT" / "LABELS" / f"{index:07d}.png", np.roll(SYN_R, index, axis=0))
    return root


def test_synthia_label_file_format(synthia_root):
    raw = cv2.imread(str(synthia_root / "GT" / "LABELS" / "0000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (H, W, 3)


def test_synthia_reads_class_id_from_r_channel_16_bit(synthia_root):
    data = SynthiaRandCityscapes(str(synthia_root))
    assert len(data) == 3 and data.max_raw_id == 65535
    for index in range(3):
        sample = data[index]
        assert sample["name"] == f"{index:07d}"
        np.testing.assert_array_equal(sample["label"], np.roll(SYN_TRAIN, index, axis=0))
    image = data[0]["image"]
    assert image.shape == (H, W, 3)
    assert tuple(image[1, 1]) == COLOUR and tuple(image[0, 0]) == (1, 2, 3)


def test_synthia_subsets_and_class_space(synthia_root):
    data = SynthiaRandCityscapes(str(synthia_root))
    assert data.class_names == CITYSCAPES_CLASSES
    assert SYNTHIA_16 == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert SYNTHIA_13 == [i for i in SYNTHIA_16 if CITYSCAPES_CLASSES[i]
                          not in ("wall", "fence", "pole")]
    assert len(SYNTHIA_13) == 13 and not {3, 4, 5} & set(SYNTHIA_13)
    assert data.eval_subsets == {"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13}
    assert not {9, 14, 16} & set(SYNTHIA_16)  # terrain, truck, train: absent from SYNTHIA


def test_synthia_list_file(synthia_root, tmp_path):
    (tmp_path / "list.txt").write_text("2\n0000000\n")
    data = SynthiaRandCityscapes(str(synthia_root), list_file=str(tmp_path / "list.txt"))
    assert [data[i]["name"] for i in range(len(data))] == ["0000002", "0000000"]


def test_synthia_layout_errors(synthia_root, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"RGB not found; expected .*GT/LABELS.*SYNTHIA"):
        SynthiaRandCityscapes(str(tmp_path / "empty"))
    (synthia_root / "GT" / "LABELS" / "0000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"RGB/0000001\.png has no label file"):
        SynthiaRandCityscapes(str(synthia_root))
    assert len(SynthiaRandCityscapes(str(synthia_root), with_labels=False)) == 3


def test_synthia_corrupt_label(synthia_root):
    (synthia_root / "GT" / "LABELS" / "0000000.png").write_bytes(b"garbage")
    with pytest.raises(OSError, match=r"cannot read label file .*GT/LABELS/0000000\.png"):
        SynthiaRandCityscapes(str(synthia_root))[0]


# ---------------------------------------------------------------------------------- Cityscapes

CITY_FILES = {
    "val": [("frankfurt", "000000", "000294"), ("frankfurt", "000001", "000538"),
            ("lindau", "000000", "000019")],
    "train": [("aachen", "000000", "000019")],
    "test": [("berlin", "000000", "000019")],
}


@pytest.fixture
def cityscapes_root(tmp_path) -> Path:
    root = tmp_path / "cityscapes"
    for split, files in CITY_FILES.items():
        for index, (city, seq, frame) in enumerate(files):
            stem = f"{city}_{seq}_{frame}"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                      rgb_image((index * 50, 100, 7)))
            gt = root / "gtFine" / split / city
            grey_png(gt / f"{stem}_gtFine_labelIds.png", np.roll(CITY_IDS, index, axis=1))
            # The other files of the release sit next to it and must be ignored.
            write_rgb(gt / f"{stem}_gtFine_color.png", rgb_image())
            cv2.imwrite(str(gt / f"{stem}_gtFine_instanceIds.png"),
                        np.full((H, W), 26001, np.uint16))
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
    return root


def test_cityscapes_val_labels_and_order(cityscapes_root):
    data = Cityscapes(str(cityscapes_root), "val")
    assert [data[i]["name"] for i in range(len(data))] == [
        "frankfurt_000000_000294_leftImg8bit", "frankfurt_000001_000538_leftImg8bit",
        "lindau_000000_000019_leftImg8bit"]
    for index in range(3):
        sample = data[index]
        np.testing.assert_array_equal(sample["label"], np.roll(CITY_TRAIN, index, axis=1))
        assert tuple(sample["image"][1, 1]) == (index * 50, 100, 7)
    assert data.eval_subsets == {"mIoU-19": list(range(19))}
    assert data.class_names == CITYSCAPES_CLASSES


def test_cityscapes_synthia_protocol(cityscapes_root):
    subsets = {"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13}
    data = Cityscapes(str(cityscapes_root), "val", eval_subsets=subsets,
                      label_classes=SYNTHIA_16)
    assert data.eval_subsets == subsets
    expected = CITY_TRAIN.copy()
    expected[np.isin(expected, [9, 14, 16])] = X  # terrain, truck, train are ignored
    np.testing.assert_array_equal(data[0]["label"], expected)
    with pytest.raises(ValueError, match=r"'bad' has ids \[19\]"):
        Cityscapes(str(cityscapes_root), "val", eval_subsets={"bad": [0, 19]})


def test_cityscapes_train_without_labels_and_test_split(cityscapes_root):
    train = Cityscapes(str(cityscapes_root), "train", with_labels=False)
    assert len(train) == 1 and "label" not in train[0]
    assert len(Cityscapes(str(cityscapes_root), "test", with_labels=False)) == 1
    with pytest.raises(ValueError, match="test split has no public labels"):
        Cityscapes(str(cityscapes_root), "test")


def test_cityscapes_errors(cityscapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val not found; expected "
                       r".*leftImg8bit/val/<city>/.*_leftImg8bit\.png.*Cityscapes layout"):
        Cityscapes(str(tmp_path), "val")
    label = (cityscapes_root / "gtFine" / "val" / "lindau"
             / "lindau_000000_000019_gtFine_labelIds.png")
    label.unlink()
    with pytest.raises(FileNotFoundError, match=r"lindau_000000_000019_leftImg8bit\.png has no "
                       r"label file \(expected .*lindau_000000_000019_gtFine_labelIds\.png"):
        Cityscapes(str(cityscapes_root), "val")
    (tmp_path / "empty" / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(ValueError, match="contains no images"):
        Cityscapes(str(tmp_path / "empty"), "train", with_labels=False)


# ---------------------------------------------------------------------------------- Cross-City

# Cityscapes label ids in the _eval.png labels; wall (12), terrain (22), truck (27), pole (17)
# are outside the 13 annotated classes and must be ignored.
CC_IDS = np.array([
    [7, 8, 11, 19, 20, 21, 23, 24],
    [25, 26, 28, 32, 33, 0, 12, 22],
    [27, 17, 7, 7, 7, 7, 7, 7],
    [26, 26, 26, 26, 23, 23, 23, 23],
    [8, 8, 8, 8, 8, 8, 8, 8],
    [7, 7, 7, 7, 7, 7, 7, 7],
], np.uint8)
CC_TRAIN = np.array([
    [0, 1, 2, 6, 7, 8, 10, 11],
    [12, 13, 15, 17, 18, X, X, X],
    [X, X, 0, 0, 0, 0, 0, 0],
    [13, 13, 13, 13, 10, 10, 10, 10],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


@pytest.fixture
def nthu_root(tmp_path) -> Path:
    root = tmp_path / "NTHU_Datasets"
    train = root / "Rome" / "Images" / "Train"
    train.mkdir(parents=True)
    for name in ("pano_00002_0_0", "pano_00001_1_180"):
        cv2.imwrite(str(train / f"{name}.jpg"), np.ascontiguousarray(rgb_image()[..., ::-1]))
    write_rgb(root / "Rome" / "Images" / "Test" / "pano_00368_0_0.png", rgb_image())
    write_rgb(root / "Rome" / "Images" / "Test" / "pano_00390_1_0.png", rgb_image())
    grey_png(root / "Rome" / "Labels" / "Test" / "pano_00368_0_0_eval.png", CC_IDS)
    palette_png(root / "Rome" / "Labels" / "Test" / "pano_00390_1_0_eval.png", CC_IDS[::-1])
    return root


def test_crosscity_test_labels(nthu_root):
    data = CrossCity(str(nthu_root), "Rome", "test")
    assert len(data) == 2
    first, second = data[0], data[1]
    assert first["name"] == "pano_00368_0_0"
    np.testing.assert_array_equal(first["label"], CC_TRAIN)
    np.testing.assert_array_equal(second["label"], CC_TRAIN[::-1])  # palette-mode label
    assert tuple(first["image"][1, 1]) == COLOUR


def test_crosscity_13_classes(nthu_root):
    data = CrossCity(str(nthu_root), "Rome", "test")
    assert data.class_names == CITYSCAPES_CLASSES
    assert data.eval_subsets == {"mIoU-13": CROSSCITY_13}
    assert [CITYSCAPES_CLASSES[i] for i in CROSSCITY_13] == [
        "road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky",
        "person", "rider", "car", "bus", "motorcycle", "bicycle"]
    assert CROSSCITY_13 == SYNTHIA_13


def test_crosscity_train_is_unlabelled(nthu_root):
    with pytest.raises(ValueError, match="Rome train split is unlabelled.*with_labels=False"):
        CrossCity(str(nthu_root), "Rome", "train")
    data = CrossCity(str(nthu_root), "Rome", "train", with_labels=False)
    assert [data[i]["name"] for i in range(2)] == ["pano_00001_1_180", "pano_00002_0_0"]
    image = data[0]["image"].astype(int)
    assert np.abs(image[3, 5] - np.array(COLOUR)).max() <= 3  # JPEG: close to the colour
    assert "label" not in data[0]


def test_crosscity_list_file_and_errors(nthu_root, tmp_path):
    (tmp_path / "test.txt").write_text("pano_00390_1_0\n")
    data = CrossCity(str(nthu_root), "Rome", "test", list_file=str(tmp_path / "test.txt"))
    assert [pair[0].name for pair in data.pairs] == ["pano_00390_1_0.png"]
    with pytest.raises(FileNotFoundError, match=r"Rio/Images/Test not found; expected "
                       r".*Rio/Labels/Test/<name>_eval\.png.*NTHU Cross-City layout"):
        CrossCity(str(nthu_root), "Rio", "test")
    (nthu_root / "Rome" / "Labels" / "Test" / "pano_00390_1_0_eval.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"pano_00390_1_0\.png has no label file "
                       r"\(expected .*pano_00390_1_0_eval\.png"):
        CrossCity(str(nthu_root), "Rome", "test")
    with pytest.raises(ValueError, match="'test'"):
        CrossCity(str(nthu_root), "Rome", "val")
    with pytest.raises(ValueError, match="city must be one of"):
        CrossCity(str(nthu_root), "Paris", "test")


# --------------------------------------------------------------------------------- integration


def test_real_loaders_plug_into_the_data_module(gta5_root, cityscapes_root):
    source = GTA5(str(gta5_root), list_file=None)
    data = UDADataModule(
        source=source, target=Cityscapes(str(cityscapes_root), "train", with_labels=False),
        val=Cityscapes(str(cityscapes_root), "val"),
        source_augmentation=Augmentation(resize=(4, 6), crop=(4, 4), hflip=True))
    assert data.num_classes == 19 and data.eval_subsets == {"mIoU-19": list(range(19))}
    item = TransformedDataset(source, Augmentation(resize=(3, 4)), "imagenet")[0]
    assert item["label"].shape == (3, 4) and item["image"].shape == (3, 3, 4)
