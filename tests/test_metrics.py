"""Confusion matrix, IoU, subset mIoU and the poly schedule against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import fit, tiny_data, tiny_method
from udaseg.evaluation import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, summarize
from udaseg.methods import SourceOnly
from udaseg.methods.base import poly_lr


def test_confusion_matrix_counts_and_skips_ignore_pixels():
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    matrix = confusion_matrix(predictions, labels, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(matrix, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
@pytest.mark.parametrize(("num_classes", "ignore_index"), [(19, 255), (5, 3), (200, 255)])
def test_confusion_matrix_equals_the_official_fast_hist(dtype, num_classes, ignore_index):
    """Every label dtype and path (uint8 one pass, wider labels clamped, an ignore label inside
    the class range, > 180 classes) against the official numpy count, with labels outside
    [0, C) and the caller's prediction tensor left unchanged."""
    generator = torch.Generator().manual_seed(num_classes)
    low = 0 if dtype == torch.uint8 else -3
    labels = torch.randint(low, min(num_classes + 4, 256), (7, 13), generator=generator)
    labels[0, :4] = 255 if dtype != torch.int16 else ignore_index
    labels[1, :3] = ignore_index
    labels = labels.to(dtype)
    predictions = torch.randint(0, num_classes, (7, 13), generator=generator).to(torch.int16)
    before = predictions.clone()
    wide, flat_predictions = labels.long().flatten().numpy(), predictions.long().flatten().numpy()
    keep = (wide >= 0) & (wide < num_classes) & (wide != ignore_index)
    expected = np.bincount(num_classes * wide[keep] + flat_predictions[keep],
                           minlength=num_classes ** 2).reshape(num_classes, num_classes)
    matrix = confusion_matrix(predictions, labels, num_classes, ignore_index)
    assert matrix.dtype == torch.int64
    assert np.array_equal(matrix.numpy(), expected)
    assert torch.equal(predictions, before)


def test_iou_and_subsets_match_hand_computation():
    # rows = truth, cols = prediction
    matrix = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    ious = iou_per_class(matrix)
    # class 0: TP 1, FP 1 (col) , FN 1 (row) -> 1/3; class 1: 2/(2+1+0) = 2/3; class 2: 1/2
    assert torch.allclose(ious, torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    metrics = summarize(matrix, ["a", "b", "c"], {"mIoU": [0, 1, 2], "mIoU-2": [0, 2]})
    assert metrics["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics["mIoU-2"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert metrics["IoU/b"] == pytest.approx(200 / 3)


def test_absent_class_is_skipped_not_counted_as_zero():
    matrix = torch.tensor([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    ious = iou_per_class(matrix)
    assert math.isnan(float(ious[2]))
    assert mean_iou(ious) == pytest.approx(1.0)


def test_metric_accumulates_over_batches():
    metric = ConfusionMatrix(num_classes=2)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 255]))
    assert torch.equal(metric.compute(), torch.tensor([[1, 1], [0, 1]]))


def test_poly_lr_values():
    assert poly_lr(2.5e-4, 0, 100) == pytest.approx(2.5e-4)
    assert poly_lr(2.5e-4, 50, 100) == pytest.approx(2.5e-4 * 0.5**0.9)
    assert poly_lr(1.0, 90, 100, power=0.9) == pytest.approx(0.1**0.9)
    assert poly_lr(1.0, 100, 100) == 0.0 and poly_lr(1.0, 150, 100) == 0.0


def test_poly_lr_linear_warmup_then_poly():
    # CLAN: lr = base * it / warmup during the pre-heat, then the plain poly value.
    assert poly_lr(1.0, 0, 100, warmup_iters=10) == 0.0
    assert poly_lr(1.0, 5, 100, warmup_iters=10) == pytest.approx(0.5)
    assert poly_lr(1.0, 10, 100, warmup_iters=10) == pytest.approx(0.9**0.9)


def test_resuming_with_another_horizon_warns_that_the_learning_rate_jumps(tmp_path):
    method = tiny_method(SourceOnly)
    trainer = fit(method, steps=2)
    checkpoint = tmp_path / "two.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=True)["udaseg_poly_horizon"] == 2
    longer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", devices=1)
    with pytest.warns(UserWarning, match=r"resuming at iteration 2: .* decays over 2 iterations, "
                      r"this run's over 4 .* jumps from 0 to 0\.5359 x lr\. Set "
                      r"model.init_args.optim.max_iters: 2"):
        longer.fit(tiny_method(SourceOnly), tiny_data(), ckpt_path=checkpoint)
    assert longer.global_step == 4
