"""GTA5 loader on tiny trees written in exactly the published format (palette label PNGs)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from tests.helpers import CITY_TRAIN, COLOUR, H, W, X, rgb_image, write_rgb
from udaseg.data.classes import CITYSCAPES_CLASSES
from udaseg.data.gta5 import GTA5


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


def test_label_alone_matches_the_sample_label_without_decoding_images(gta5_root, monkeypatch):
    """Labels read alone: same train ids (the mismatched label resized to its image's header
    size), no image decoded. Rare class sampling's class index counts the mismatched label at
    its file's own size (3x4, a quarter of its image), as DAFormer counts the files."""
    from udaseg.data.rare_class_sampling import class_pixel_counts

    data = GTA5(str(gta5_root))
    with pytest.warns(UserWarning):
        expected = [data[i]["label"] for i in range(len(data))]
    at_file_size = [expected[0], expected[1][::2, ::2], expected[2]]
    counts = np.stack([np.bincount(label[label != 255].ravel(), minlength=19)
                       for label in at_file_size])

    def no_decoding(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(GTA5, "read_image", staticmethod(no_decoding))
    with pytest.warns(UserWarning, match=re.escape(str(gta5_root / "labels" / "00002.png"))):
        for index, label in enumerate(expected):
            np.testing.assert_array_equal(data.label(index), label)
        np.testing.assert_array_equal(class_pixel_counts(data, 19, progress=False), counts)
