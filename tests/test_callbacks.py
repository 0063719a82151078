"""Visual and reporting callbacks."""

from __future__ import annotations

import cv2
import numpy as np
import pytorch_lightning as pl

from tests.test_advent import tiny_data, tiny_method
from udaseg.callbacks import EntropyMaps
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
