"""A user's own dataset from the config alone (`udaseg.data.LabelledFolder`): grey or palette
label PNGs through a label-space file, patterns or a list file, errors naming file and key, and
the example overlay adapting the built-in source to a user's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.helpers import REPO, grey_png, palette_png, rgb_image, run_dir, write_rgb
from udaseg.data import IGNORE_INDEX, LabelledFolder
from udaseg.runtime.cli import main

SPACE = {"classes": ["road", "car", "person"], "id_to_train_id": {7: 0, 26: 1, 24: 2},
         "eval_subsets": {"mIoU-small": [2]}}
RAW = np.array([[7, 26, 24, 0], [7, 7, 26, 33], [24, 24, 7, 7]], np.uint8)
TRAIN = np.array([[0, 1, 2, 255], [0, 0, 1, 255], [2, 2, 0, 0]], np.uint8)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "mine"
    write_rgb(root / "images" / "city_a" / "one.png", rgb_image(height=3, width=4))
    write_rgb(root / "images" / "city_b" / "two.png", rgb_image((0, 9, 9), height=3, width=4))
    grey_png(root / "labels" / "city_a" / "one_label.png", RAW)              # grey ids
    palette_png(root / "labels" / "city_b" / "two_label.png", RAW[::-1])     # palette indices
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return root


def test_labels_are_read_through_the_label_space_file(folder):
    data = LabelledFolder(str(folder), "space.yaml", images="images/*/*.png",
                          labels="labels/{parent}/{stem}_label.png")
    assert len(data) == 2 and data.class_names == ("road", "car", "person")
    assert data.eval_subsets == {"mIoU": [0, 1, 2], "mIoU-small": [2]}
    assert np.array_equal(data[0]["label"], TRAIN)
    assert np.array_equal(data[1]["label"], TRAIN[::-1])           # palette indices, not colours
    assert data[0]["image"].shape == (3, 4, 3) and data[1]["name"] == "two"
    unlabelled = LabelledFolder(str(folder), "space.yaml", images="images/*/*.png",
                                with_labels=False)
    assert "label" not in unlabelled[0]


def test_a_list_file_and_a_json_label_space(folder):
    (folder / "space.json").write_text(json.dumps({"classes": ["road", "car", "person"]}))
    (folder / "val.txt").write_text("images/city_b/two.png\n")
    data = LabelledFolder(str(folder), str(folder / "space.json"), list_file="val.txt",
                          labels="labels/{parent}/{stem}_label.png")
    assert len(data) == 1
    # No table: raw values 0..C-1 are the train ids, everything else is ignored.
    raw = RAW[::-1]
    expected = np.where(raw < 3, raw, IGNORE_INDEX)
    assert np.array_equal(data[0]["label"], expected)


@pytest.mark.parametrize("space, message", [
    ({"classes": "road"}, "'classes' must be a list of class names"),
    ({"classes": ["road"], "id_to_train_id": {"seven": 0}},
     "raw label value 'seven' in 'id_to_train_id' is not an integer"),
    ({"classes": ["road"], "id_to_train_id": {7: 3}},
     r"raw value 7 maps to 3, expected a train id in 0\.\.0 or 255"),
    ({"classes": ["road"], "eval_subsets": {"small": [4]}}, "eval_subsets.small must list"),
])
def test_label_space_errors_name_the_file_and_the_key(folder, space, message):
    (folder / "bad.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(ValueError, match=rf"label-space file .*bad\.yaml: {message}"):
        LabelledFolder(str(folder), "bad.yaml", images="images/*/*.png",
                       labels="labels/{parent}/{stem}_label.png")


def test_layout_errors_name_the_files(folder):
    with pytest.raises(FileNotFoundError, match=r"image .*one\.png has no label file "
                       r"\(expected .*labels/one\.png\)"):
        LabelledFolder(str(folder), "space.yaml", images="images/*/*.png")
    with pytest.raises(ValueError, match=r"split 'pictures/\*\.png' under .*mine contains no "
                       "images"):
        LabelledFolder(str(folder), "space.yaml", images="pictures/*.png")
    with pytest.raises(FileNotFoundError, match=r"label-space file .*nothere\.yaml not found"):
        LabelledFolder(str(folder), "nothere.yaml", images="images/*/*.png", with_labels=False)


def test_the_example_overlay_adapts_the_built_in_source_to_a_users_folder(tmp_path,
                                                                          monkeypatch):
    root = tmp_path / "my_photos"
    rng = np.random.default_rng(0)
    for index in range(3):
        write_rgb(root / "train" / f"frame{index}.jpg",
                  rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    for index in range(2):
        write_rgb(root / "val" / "images" / f"view{index}.png",
                  rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
        grey_png(root / "val" / "labels" / f"view{index}.png",
                 rng.integers(0, 9, (64, 96)).astype(np.uint8))
    monkeypatch.chdir(REPO)          # the overlay's label_space path is relative to the repo
    main(["fit", "--config", "configs/synthetic/source_only.yaml",
          "--config", "configs/synthetic/user/my_target.yaml",
          "--data.target.init_args.root", str(root), "--data.val.init_args.root", str(root),
          "--trainer.max_steps", "2", "--trainer.callbacks", "null",
          "--trainer.enable_progress_bar", "false", "--data.num_workers", "0",
          "--data.source.init_args.num_images", "16",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.logger.init_args.name", "mine"])
    result = json.loads((run_dir(tmp_path, 0, "mine") / "val_metrics.json").read_text())
    assert sum(map(sum, result["confusion_matrix"])) == 2 * 64 * 96   # both images, all pixels
    assert "mIoU-small" in result
