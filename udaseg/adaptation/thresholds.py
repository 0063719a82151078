"""TUFL's pixel selection: a target pixel trains when the clean view's confidence beats its
predicted class's threshold, class-adaptive (IAST's rule, Mei et al., ECCV 2020) or fixed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional

import torch
from torch import nn

from udaseg.losses import adaptive_thresholds, confidence_selection

ThresholdMode = Literal["adaptive", "fixed"]


def _same_rank(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class ThresholdSelection(nn.Module):
    """Class-wise confidence thresholds theta (a (C,) float64 buffer, checkpointed) and the
    selection they make.

    Adaptive: each update moves theta with IAST's rule from the clean predictions of every rank
    (`update`'s `gather`), so the thresholds are the same on each. Fixed: `initial` for every
    class, compared in float32 as officially.

    Args:
        num_classes: C.
        mode: "adaptive" or "fixed".
        initial: theta_0, and the fixed threshold (0.8).
        rank, exponent, momentum: IAST's b 0.8, d 8 and a 0.9.
    """

    def __init__(self, num_classes: int, mode: ThresholdMode = "adaptive", initial: float = 0.8,
                 rank: float = 0.8, exponent: float = 8.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.mode, self.initial = mode, initial
        self.rank, self.exponent, self.momentum = rank, exponent, momentum
        # float64 as officially: the update mixes in (1 - a) * psi every iteration.
        self.register_buffer("thresholds", torch.full((num_classes,), initial,
                                                      dtype=torch.float64))

    @property
    def adaptive(self) -> bool:
        return self.mode == "adaptive"

    @torch.no_grad()
    def update(self, clean_prob: torch.Tensor, counted: Optional[torch.Tensor] = None,
               gather: Callable[[torch.Tensor], torch.Tensor] = _same_rank) -> None:
        """IAST step from the (N, C, H, W) clean predictions; `counted` (N, H, W) bool limits
        the statistics to those pixels (None: every pixel); `gather` concatenates a tensor of
        every rank along dim 0 (identity on one process)."""
        confidence, predicted = (gather(value) for value in clean_prob.max(dim=1))
        if counted is not None:
            # uint8: gloo cannot gather bool tensors.
            counted = gather(counted.to(torch.uint8)).bool()
            confidence, predicted = confidence[counted], predicted[counted]
        self.thresholds.copy_(adaptive_thresholds(confidence, predicted, self.thresholds,
                                                  b=self.rank, d=self.exponent, a=self.momentum))

    def current(self) -> torch.Tensor:
        """The thresholds the selection compares with: (C,) adaptive, or a float32 scalar."""
        if not self.adaptive:
            # float32 as officially (`UnsupFocalLoss` compares float32 with float32(0.8)).
            return torch.tensor(self.initial, dtype=torch.float32)
        return self.thresholds

    def select(self, clean_prob: torch.Tensor,
               in_frame: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, H, W) bool: the pixels to train (`confidence_selection`)."""
        return confidence_selection(clean_prob, self.current(), in_frame)
