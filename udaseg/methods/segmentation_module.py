"""The part of every method that is not training: a LightningModule around one segmenter.

`SegmentationModule` builds the segmenter (checking the heads a method reads), names the
teachers, and runs validation, test and predict with the test-time options
(`udaseg.evaluation.Inference`), averaging BN statistics over DDP ranks first.
`udaseg.methods.UDAMethod` adds the training loop on top; its constructor sets what this class
reads: `segmenter`, `evaluator` (a `SegmentationEvaluator`), `fast_path`, `weights_config`,
`num_classes` and the `segmenter` hyperparameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from udaseg.adaptation.teacher import Teacher
from udaseg.evaluation.evaluator import SegmentationEvaluator
from udaseg.losses import upsample_logits
from udaseg.methods.fast_path import FastPath
from udaseg.models import (
    HRDA,
    MAIN,
    SegmenterFactory,
    SegmenterWeights,
    build_segmenter,
    initialize_segmenter,
)


class SegmentationModule(pl.LightningModule):
    """A segmenter with its construction checks and its evaluation (no training)."""

    #: Whether the method trains multi-resolution segmenters (`udaseg.models.HRDA`) with their
    #: own forward and loss; the others refuse them.
    trains_multi_resolution: ClassVar[bool] = False

    segmenter: nn.Module
    evaluator: SegmentationEvaluator
    fast_path: FastPath
    weights_config: SegmenterWeights
    num_classes: int

    # ----------------------------------------------------------------- construction
    @classmethod
    def default_segmenter(cls) -> SegmenterFactory:
        """The segmenter this method builds when none is configured (its constructor default,
        e.g. CLAN's `DualClassifierDeepLab`); tools use it to size a network for a method."""
        for klass in cls.__mro__:
            parameter = inspect.signature(klass.__init__).parameters.get("segmenter")
            if parameter is not None:
                return parameter.default
        raise TypeError(f"{cls.__name__} takes no segmenter")

    def required_heads(self) -> Sequence[str]:
        """Segmenter heads this method reads besides "main" (e.g. CLAN: "first", "second")."""
        return ()

    def build_segmenter(self) -> nn.Module:
        """The segmenter with its initial weights; fails early if it lacks a required head."""
        segmenter = build_segmenter(self.hparams.segmenter, self.num_classes)
        missing = [head for head in self.required_heads() if head not in segmenter.heads]
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs the segmenter head(s) {missing}, but "
                f"{type(segmenter).__name__} has {list(segmenter.heads)}: change "
                f"model.init_args.segmenter{self.head_hint()}")
        if isinstance(segmenter, HRDA) and not self.trains_multi_resolution:
            raise ValueError(f"{type(self).__name__} does not train HRDA's multi-resolution "
                             "segmenter (its training forward takes a detail crop): use "
                             "udaseg.methods.DAFormer, or another model.init_args.segmenter")
        initialize_segmenter(segmenter, self.weights_config)
        return segmenter

    @property
    def has_trained_weights(self) -> bool:
        """Whether construction loaded trained weights (`weights.init_checkpoint`), so that
        evaluating without a `--ckpt_path` is meaningful."""
        return bool(self.weights_config.init_checkpoint)

    def head_hint(self) -> str:
        """Appended to the missing-head error: which segmenter or option would do."""
        return ""

    def teachers(self) -> list[Teacher]:
        """The method's teachers (`udaseg.adaptation.Teacher` components)."""
        return [child for child in self.children() if isinstance(child, Teacher)]

    def teacher_networks(self) -> list[nn.Module]:
        """The networks of the method's teachers (`udaseg.adaptation.Teacher` components)."""
        return [teacher.network for teacher in self.teachers()]

    # ----------------------------------------------------------------- evaluation
    def evaluation_network(self) -> nn.Module:
        """The network validation, test and predict run: the segmenter (a method may evaluate
        its teacher instead)."""
        return self.segmenter

    def logits_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Main-classifier logits of `images` upsampled to `size`: one network pass."""
        return upsample_logits(self.evaluation_network()(images)[MAIN], size,
                               self.logits_align_corners)

    @property
    def logits_align_corners(self) -> bool:
        """How logits are resized for evaluation: the segmenter's `align_corners` (True for
        networks that do not say, as the DeepLabV2 UDA code)."""
        return getattr(self.segmenter, "align_corners", True)

    def predict_logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits at `size` (the label resolution in evaluation) under the test-time options."""
        return self.evaluator.predict(self.logits_at, self.fast_path.layout(images), size,
                                      self.logits_align_corners)

    @torch.no_grad()
    def average_bn_statistics(self) -> None:
        """Make BN running statistics identical on every rank (their mean): each rank's forwards
        update its own, and DDP broadcasts buffers only once per iteration, so without this each
        rank would evaluate (and a resumed run restart) with a slightly different model."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        for module in (self.segmenter, *self.teacher_networks()):
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    buffer.copy_(self.trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def _evaluate(self, stage: str, batch: dict) -> None:
        labels = batch["label"]
        self.evaluator.process(stage, self.predict_logits(batch["image"],
                                                          tuple(labels.shape[-2:])), labels)

    def _log_evaluation(self, stage: str) -> None:
        metrics = self.evaluator.compute(stage)
        # Values are already reduced over ranks (torchmetrics); sync_dist only averages copies.
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()},
                      on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.average_bn_statistics()

    def on_test_epoch_start(self) -> None:
        self.average_bn_statistics()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Train-id maps at each image's original size (one size per batch)."""
        height, width = (int(value) for value in batch["original_size"][0])
        logits = self.predict_logits(batch["image"], (height, width))
        return {"prediction": logits.argmax(dim=1).to(torch.uint8), "name": batch["name"]}

