"""Evaluation of every method: the main head's logits at the label size, a confusion matrix
on the device, per-class IoU and mIoU over the named class subsets, BN statistics made
identical across ranks first."""

from __future__ import annotations

import torch
from torch import nn

from udaseg.inference import infer_logits
from udaseg.losses import upsample_logits
from udaseg.metrics import ConfusionMatrix, summarize
from udaseg.models import MAIN


class SegmentationEvaluation:
    """Validation, test and predict steps of `UDAMethod` (a mixin of that LightningModule: it
    reads the method's `segmenter`, `inference_config`, `val_confusion`/`test_confusion`,
    `class_names`, `eval_subsets` and `in_layout`, and fills `eval_results` and
    `eval_confusion`)."""

    def logits_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Main-classifier logits of `images` upsampled to `size`: one network pass."""
        return upsample_logits(self.segmenter(images)[MAIN], size)

    def predict_logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits at `size` (the label resolution in evaluation) under the method's test-time
        options (`inference`: flip, scales, sliding windows); plain `logits_at` by default."""
        return infer_logits(self.logits_at, self.in_layout(images), size, self.inference_config)

    def _evaluate_batch(self, batch: dict, confusion: ConfusionMatrix) -> None:
        labels = batch["label"]
        logits = self.predict_logits(batch["image"], tuple(labels.shape[-2:]))
        confusion.update(logits.argmax(dim=1), labels)

    def _finish_evaluation(self, stage: str, confusion: ConfusionMatrix) -> None:
        matrix = confusion.compute()
        metrics = summarize(matrix, self.class_names, self.eval_subsets)
        confusion.reset()
        self.eval_results[stage] = metrics
        self.eval_confusion[stage] = matrix.cpu().tolist()
        # Values are already reduced over ranks (torchmetrics); sync_dist only averages copies.
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()},
                      on_step=False, on_epoch=True, sync_dist=True)

    @torch.no_grad()
    def average_bn_statistics(self) -> None:
        """Make BN running statistics identical on every rank (their mean).

        Under DDP each rank's forward passes update its own running stats, and DDP broadcasts
        buffers only once per iteration, so the ranks drift apart; without this each rank would
        evaluate its shard with a slightly different model.
        """
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        for buffer in (buffer for module in self.bn_statistics_modules()
                       for buffer in module.buffers()):
            if buffer.is_floating_point():
                buffer.copy_(self.trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def bn_statistics_modules(self) -> list[nn.Module]:
        """Networks whose BN statistics `average_bn_statistics` makes identical across ranks
        (the segmenter; methods with a teacher add it)."""
        return [self.segmenter]

    def on_validation_epoch_start(self) -> None:
        self.average_bn_statistics()

    def on_test_epoch_start(self) -> None:
        self.average_bn_statistics()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.val_confusion)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val", self.val_confusion)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Train-id maps at each image's original size (one size per batch)."""
        height, width = (int(value) for value in batch["original_size"][0])
        logits = self.predict_logits(batch["image"], (height, width))
        return {"prediction": logits.argmax(dim=1).to(torch.uint8), "name": batch["name"]}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.test_confusion)

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test", self.test_confusion)
