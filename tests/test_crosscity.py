"""NTHU Cross-City loader on tiny trees in the published layout (13 annotated classes)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import CC_TRAIN, COLOUR
from udaseg.data.classes import CITYSCAPES_CLASSES
from udaseg.data.crosscity import CROSSCITY_13, CrossCity
from udaseg.data.synthia import SYNTHIA_13


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
