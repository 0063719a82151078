"""HRDA's training forward as a method runs it (Hoyer, Dai, Van Gool, "HRDA: Context-Aware
High-Resolution Domain-Adaptive Semantic Segmentation", ECCV 2022): every labelled batch the
student trains on (source, mixed, masked) gets a detail crop of its own, drawn in order from the
iteration's generator, and HRDA's loss on the fused and the detail prediction."""

from __future__ import annotations

from typing import Literal, Optional

import torch

from udaseg.losses import MultiResolutionLoss, multi_resolution_loss
from udaseg.models.hrda import HRDA, MultiResolutionOutput

#: `iteration_generator` stream of HRDA's detail crops.
DETAIL_CROP_STREAM = 4


class DetailCrops:
    """One iteration's HRDA forwards of `segmenter`, each with the next crop from `generator`.

    Args:
        segmenter: the student (`udaseg.models.HRDA`).
        generator: the iteration's crop generator (`DETAIL_CROP_STREAM`), so the crops are the
            same in every run with the seed, resumed or not, on any device.
        ignore_index: the labels' ignore value.
        reduction: the unweighted (source) loss's reduction (`UDAMethod.loss_reduction`).
    """

    def __init__(self, segmenter: HRDA, generator: torch.Generator, ignore_index: int = 255,
                 reduction: Literal["labelled", "all_pixels"] = "all_pixels") -> None:
        self.segmenter = segmenter
        self.generator = generator
        self.ignore_index = ignore_index
        self.reduction = reduction

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             pixel_weights: Optional[torch.Tensor] = None
             ) -> tuple[MultiResolutionLoss, MultiResolutionOutput]:
        """HRDA's loss (`multi_resolution_loss`, the segmenter's detail weight) of (N, 3, H, W)
        `images` with (N, H, W) `labels` and optional pixel weights, and the forward's output
        (its context features feed the feature distance)."""
        box = self.segmenter.draw_detail_box(*images.shape[-2:], self.generator)
        output = self.segmenter.forward_train(images, box)
        parts = multi_resolution_loss(output.fused, output.detail, output.box, labels,
                                      pixel_weights, self.segmenter.detail_loss_weight,
                                      self.ignore_index, self.reduction)
        return parts, output
