"""The CLI on tiny GTA5 -> Cityscapes fixture trees in the real formats: train 2 iterations,
evaluate on the val split, evaluate a released-style plain checkpoint, export predictions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from udaseg.report.visualize import CITYSCAPES_PALETTE
from udaseg.runtime.cli import main


def write_config(tmp_path: Path, gta5: Path, cityscapes: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 2, "val_check_interval": 2, "enable_progress_bar": False,
                    "accelerator": "cpu", "devices": 1,
                    "logger": {"class_path": "udaseg.runtime.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "g2c"}}},
        "model": {"class_path": "udaseg.methods.AdvEnt", "init_args": {
            "segmenter": {"class_path": "udaseg.models.DeepLabV2",
                          "init_args": {"depth": 18, "width": 8}},
            "discriminator_width": 8}},
        "data": {
            "source": {"class_path": "udaseg.data.GTA5", "init_args": {"root": str(gta5)}},
            "target": {"class_path": "udaseg.data.Cityscapes",
                       "init_args": {"root": str(cityscapes), "with_labels": False}},
            "val": {"class_path": "udaseg.data.Cityscapes",
                    "init_args": {"root": str(cityscapes), "split": "val"}},
            "source_augmentation": {"resize": [32, 64]},
            "target_augmentation": {"resize": [32, 64]},  # 5 stride-2 D convs
            # The paper protocol in miniature: a resized input, logits upsampled to the label.
            "eval_augmentation": {"resize": [16, 32], "resize_label": False},
            "normalization": "caffe_bgr", "batch_size": 1},
    }
    path = tmp_path / "g2c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_gta5_to_cityscapes_fit_evaluate_released_checkpoint_and_predict(
        tmp_path, gta5_root, cityscapes_root):
    config = write_config(tmp_path, gta5_root, cityscapes_root)
    main(["fit", "--config", str(config)])
    run = tmp_path / "runs" / "g2c" / "version_0"
    fitted = read_json(run / "val_metrics.json")
    assert fitted["iteration"] == 2
    assert "mIoU-19" in fitted and "IoU/traffic sign" in fitted

    # A released checkpoint is a plain DeepLabV2 state dict: evaluate it without training.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    plain = {key.removeprefix("segmenter."): value for key, value in
             checkpoint["state_dict"].items() if key.startswith("segmenter.")}
    released = tmp_path / "GTA2Cityscapes_Tiny.pth"
    torch.save(plain, released)
    main(["validate", "--config", str(config),
          "--model.init_args.weights.init_checkpoint", str(released)])
    assert read_json(tmp_path / "runs" / "g2c" / "version_1" / "val_metrics.json")[
        "mIoU-19"] == pytest.approx(fitted["mIoU-19"], abs=1e-4)

    output = tmp_path / "predictions"
    images = cityscapes_root / "leftImg8bit" / "val"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--data.predict", "udaseg.data.ImageFolder", "--data.predict.root", str(images),
          "--data.predict.pattern", "*/*.png", "--predictions.output_dir", str(output),
          "--predictions.save_train_ids", "true"])
    colour_files = sorted(output.glob("*/*_color.png"))
    assert len(colour_files) == 3 and colour_files[0].parent.name == "frankfurt"
    colour = cv2.cvtColor(cv2.imread(str(colour_files[0])), cv2.COLOR_BGR2RGB)
    assert colour.shape == (6, 8, 3), "predictions are written at the original image size"
    palette = {tuple(rgb) for rgb in CITYSCAPES_PALETTE}
    assert {tuple(pixel) for pixel in colour.reshape(-1, 3)} <= palette
    train_ids = cv2.imread(str(colour_files[0]).replace("_color", "_trainIds"),
                           cv2.IMREAD_UNCHANGED)
    assert train_ids.shape == (6, 8) and train_ids.max() < 19
    assert np.array_equal(colour, CITYSCAPES_PALETTE[train_ids])
    legend = cv2.imread(str(output / "legend.png"))
    assert legend is not None and legend.shape[0] >= 18, "a class -> colour legend"
