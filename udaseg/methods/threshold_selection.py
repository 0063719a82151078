"""TUFL's pixel selection (a mixin of `udaseg.methods.TUFL`): the clean view's confidence must
beat its predicted class's threshold, class-adaptive (IAST's rule) or fixed. The adaptive
thresholds are a checkpointed buffer moved by the statistics of every rank, so they are the
same on each.

Needs the method's `thresholds` buffer ((C,) float64) and `hparams.threshold /
initial_threshold / threshold_rank / threshold_exponent / threshold_momentum`.
"""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.losses import adaptive_thresholds, confidence_selection


class ThresholdSelection:
    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` of every rank, concatenated along dim 0 (itself on one process)."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return tensor
        return self.all_gather(tensor).flatten(0, 1)

    @torch.no_grad()
    def update_thresholds(self, clean_prob: torch.Tensor,
                          counted: Optional[torch.Tensor] = None) -> None:
        """IAST step from the (N, C, H, W) clean predictions of all ranks (same result on
        each); `counted` (N, H, W) bool limits the statistics to those pixels, None counts
        every pixel."""
        confidence, predicted = (self.gather(value) for value in clean_prob.max(dim=1))
        if counted is not None:
            # uint8: gloo cannot gather bool tensors.
            counted = self.gather(counted.to(torch.uint8)).bool()
            confidence, predicted = confidence[counted], predicted[counted]
        self.thresholds.copy_(adaptive_thresholds(
            confidence, predicted, self.thresholds, b=self.hparams.threshold_rank,
            d=self.hparams.threshold_exponent, a=self.hparams.threshold_momentum))

    def selection_thresholds(self) -> torch.Tensor:
        if self.hparams.threshold == "fixed":
            # float32 as officially (`UnsupFocalLoss` compares float32 with float32(0.8)).
            return torch.tensor(self.hparams.initial_threshold, dtype=torch.float32)
        return self.thresholds

    def select_pixels(self, clean_prob: torch.Tensor,
                      in_frame: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, H, W) bool: the pixels the focal loss trains (`confidence_selection`)."""
        return confidence_selection(clean_prob, self.selection_thresholds(), in_frame)
