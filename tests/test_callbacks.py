"""Visual and reporting callbacks."""

from __future__ import annotations

import io
import json
import os
import stat

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tests.helpers import fit, tiny_data, tiny_method
from udaseg.callbacks import EntropyMaps, IterationProgressBar
from udaseg.data import SyntheticStreets
from udaseg.methods import AdvEnt, Ensemble, SourceOnly
from udaseg.report.visualize import CITYSCAPES_PALETTE, colorize, palette_for
from udaseg.runtime.files import write_json_atomic, write_png_atomic


def test_entropy_maps_written_as_image_grid(tmp_path):
    method = tiny_method(SourceOnly)
    trainer = pl.Trainer(logger=pl.loggers.CSVLogger(tmp_path), accelerator="cpu", devices=1,
                         callbacks=[EntropyMaps(num_images=2)], enable_progress_bar=False)
    trainer.validate(method, tiny_data())
    figures = sorted((tmp_path / "lightning_logs" / "version_0" / "entropy_maps").glob("*.png"))
    assert len(figures) == 1
    figure = cv2.cvtColor(cv2.imread(str(figures[0])), cv2.COLOR_BGR2RGB)
    # A title row, 2 rows of 32-pixel images in 4 panels (input, prediction, entropy, truth)
    # of 64 pixels, then the legend: 9 classes, 2 per 256-pixel row.
    assert figure.shape == (18 + 2 * 32 + 5 * 18, 4 * 64, 3)
    assert figure[:18].max() > 0 and figure[:18, :, 0].std() > 0, "column titles are drawn"
    entropy_panel = figure[18:18 + 64, 2 * 64:3 * 64]
    assert entropy_panel.std() > 0, "an untrained model is not equally certain everywhere"
    legend_strip = figure[18 + 64:]
    swatches = {tuple(int(v) for v in pixel) for pixel in legend_strip.reshape(-1, 3)}
    assert {(107, 142, 35), (70, 130, 180), (0, 0, 142)} <= swatches, \
        "vegetation, sky and car swatches in their Cityscapes colours"


def test_class_colours_follow_names_not_ids():
    synthetic = SyntheticStreets("real", "val", 1)
    palette = synthetic.palette
    names = list(synthetic.class_names)
    assert tuple(palette[names.index("vegetation")]) == (107, 142, 35)  # not wall's lavender
    assert tuple(palette[names.index("sky")]) == (70, 130, 180)
    assert tuple(palette[names.index("car")]) == (0, 0, 142)
    assert tuple(palette[names.index("person")]) == (220, 20, 60)
    own = palette_for(["road", "crater", "dune"])
    assert tuple(own[0]) == (128, 64, 128) and len({tuple(c) for c in own}) == 3, \
        "unknown names get distinct colours"
    label = np.array([[0, 13], [255, 18]], dtype=np.uint8)
    colours = colorize(label, CITYSCAPES_PALETTE)
    assert tuple(colours[0, 0]) == (128, 64, 128) and tuple(colours[0, 1]) == (0, 0, 142)
    assert tuple(colours[1, 0]) == (0, 0, 0), "ignore is black"


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
    return cv2.imread(str(figure))[18:18 + 64, 2 * 64:3 * 64]


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


def test_progress_bar_counts_iterations_and_shows_the_main_losses():
    screen = io.StringIO()
    bar = IterationProgressBar(console_kwargs={"file": screen, "force_terminal": True,
                                               "width": 200})
    method = tiny_method(AdvEnt)
    fit(method, steps=3, callbacks=[bar], enable_progress_bar=True)
    shown = screen.getvalue()
    assert "Iteration" in shown and "Epoch" not in shown
    assert "3/3" in shown and "it/s" in shown
    assert "train/seg" in shown and "train/adv_main" in shown and "v_num" not in shown
