"""Visual and reporting callbacks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytorch_lightning as pl
import pytest

from tests.test_advent import tiny_data, tiny_method
from udaseg.callbacks import EntropyMaps
from udaseg.callbacks.files import write_json_atomic
from udaseg.methods import SourceOnly
from udaseg.visualize import CITYSCAPES_PALETTE, colorize


def test_entropy_maps_written_as_image_grid(tmp_path):
    method = tiny_method(SourceOnly)
    trainer = pl.Trainer(logger=pl.loggers.CSVLogger(tmp_path), accelerator="cpu", devices=1,
                         callbacks=[EntropyMaps(num_images=2)], enable_progress_bar=False)
    trainer.validate(method, tiny_data())
    figures = sorted((tmp_path / "lightning_logs" / "version_0" / "entropy_maps").glob("*.png"))
    assert len(figures) == 1
    figure = cv2.imread(str(figures[0]))
    # 2 rows of 32-pixel images; 4 panels (input, prediction, entropy, truth) of 64 pixels.
    assert figure.shape == (2 * 32, 4 * 64, 3)
    entropy_panel = figure[:, 2 * 64:3 * 64]
    assert entropy_panel.std() > 0, "an untrained model is not equally certain everywhere"


def test_colorize_uses_the_cityscapes_palette_and_black_for_ignore():
    label = np.array([[0, 13], [255, 18]], dtype=np.uint8)
    colours = colorize(label)
    assert tuple(colours[0, 0]) == (128, 64, 128) and tuple(colours[0, 1]) == (0, 0, 142)
    assert tuple(colours[1, 0]) == (0, 0, 0)
    assert tuple(colours[1, 1]) == tuple(CITYSCAPES_PALETTE[18])


def test_failed_atomic_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "out" / "val_metrics.json"
    with pytest.raises(TypeError):
        write_json_atomic(target, {"mIoU": object()})  # not JSON-serialisable mid-write
    assert list((tmp_path / "out").iterdir()) == []
    write_json_atomic(target, {"mIoU": 1.5})
    assert json.loads(target.read_text()) == {"mIoU": 1.5}
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["val_metrics.json"]
