"""SYNTHIA-RAND-CITYSCAPES loader on tiny trees in the published format (16-bit labels, id in R)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.helpers import COLOUR, SYN_TRAIN, H, W
from udaseg.data.classes import CITYSCAPES_CLASSES
from udaseg.data.synthia import SYNTHIA_13, SYNTHIA_16, SynthiaRandCityscapes


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
    assert [i for i in SYNTHIA_16 if CITYSCAPES_CLASSES[i]
                          not in ("wall", "fence", "pole")] == SYNTHIA_13
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
