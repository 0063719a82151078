"""Cityscapes loader on tiny trees in the published layout, its evaluation protocols, and the
real loaders inside the data module."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import CITY_TRAIN, X
from udaseg.data.cityscapes import PROTOCOLS, Cityscapes
from udaseg.data.classes import CITYSCAPES_CLASSES
from udaseg.data.datamodule import UDADataModule
from udaseg.data.gta5 import GTA5
from udaseg.data.synthia import SYNTHIA_13, SYNTHIA_16
from udaseg.data.transforms import Augmentation, TransformedDataset


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


def test_cityscapes_synthia_protocol_is_chosen_by_name(cityscapes_root):
    data = Cityscapes(str(cityscapes_root), "val", protocol="synthia-16")
    assert data.eval_subsets == {"mIoU-16": SYNTHIA_16, "mIoU-13": SYNTHIA_13}
    expected = CITY_TRAIN.copy()
    expected[np.isin(expected, [9, 14, 16])] = X  # terrain, truck, train are ignored
    np.testing.assert_array_equal(data[0]["label"], expected)
    assert sorted(PROTOCOLS) == ["cityscapes-19", "synthia-16"]
    with pytest.raises(ValueError, match=r"protocol must be one of \['cityscapes-19', "
                       r"'synthia-16'\], got 'synthia-13'"):
        Cityscapes(str(cityscapes_root), "val", protocol="synthia-13")


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


def test_real_loaders_plug_into_the_data_module(gta5_root, cityscapes_root):
    source = GTA5(str(gta5_root), list_file=None)
    data = UDADataModule(
        source=source, target=Cityscapes(str(cityscapes_root), "train", with_labels=False),
        val=Cityscapes(str(cityscapes_root), "val"),
        source_augmentation=Augmentation(resize=(4, 6), crop=(4, 4), hflip=True))
    assert data.num_classes == 19 and data.eval_subsets == {"mIoU-19": list(range(19))}
    item = TransformedDataset(source, Augmentation(resize=(3, 4)), "imagenet")[0]
    assert item["label"].shape == (3, 4) and item["image"].shape == (3, 3, 4)
