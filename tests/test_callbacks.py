"""Visual and reporting callbacks."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tests.helpers import tiny_data, tiny_method
from udaseg.callbacks import EntropyMaps
from udaseg.callbacks.files import write_json_atomic, write_png_atomic
from udaseg.methods import Ensemble, SourceOnly
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


def entropy_panel(method, tmp_path) -> np.ndarray:
    trainer = pl.Trainer(logger=pl.loggers.CSVLogger(tmp_path), accelerator="cpu", devices=1,
                         callbacks=[EntropyMaps(num_images=2)], enable_progress_bar=False)
    trainer.validate(method, tiny_data())
    figure = next((tmp_path / "lightning_logs" / "version_0" / "entropy_maps").glob("*.png"))
    return cv2.imread(str(figure))[:, 2 * 64:3 * 64]


def test_ensemble_predicts_log_averaged_probabilities_so_entropy_maps_are_right(tmp_path):
    members = [tiny_method(SourceOnly) for _ in range(2)]
    paths = []
    for index, member in enumerate(members):
        paths.append(tmp_path / f"member{index}.pth")
        torch.save(member.segmenter.state_dict(), paths[-1])
    ensemble = tiny_method(Ensemble, checkpoints=[str(path) for path in paths],
                           member_weights=[1.0, 3.0]).eval()
    images = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        averaged = sum(weight * F.softmax(member.eval().predict_logits(images, (32, 64)), dim=1)
                       for weight, member in zip((0.25, 0.75), members, strict=True))
        # Callers (entropy maps, any softmax) must get the average back from the "logits".
        assert torch.allclose(F.softmax(ensemble.predict_logits(images, (32, 64)), dim=1),
                              averaged, atol=1e-6)
    # Two copies of one model are that model: the same entropy map, not a near-uniform one.
    twice = tiny_method(Ensemble, checkpoints=[str(paths[0])] * 2)
    np.testing.assert_allclose(entropy_panel(twice, tmp_path / "ensemble"),
                               entropy_panel(members[0], tmp_path / "single"), atol=2)


def test_result_files_get_the_umask_mode_not_a_private_one(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "val_metrics.json", {"mIoU": 1.0})
        write_png_atomic(tmp_path / "figure.png", np.zeros((2, 2, 3), np.uint8))
    finally:
        os.umask(previous)
    for name in ("val_metrics.json", "figure.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
