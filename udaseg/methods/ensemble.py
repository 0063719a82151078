"""Evaluate the average softmax of several trained segmenters (ADVENT's best GTA5 result, 45.5,
averages an AdvEnt and a MinEnt model). Evaluation only: `udaseg validate|test` with this method
and no `--ckpt_path`."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.losses import upsample_logits
from udaseg.methods.base import UDAMethod
from udaseg.models import MAIN, build_segmenter, load_segmenter_checkpoint


class Ensemble(UDAMethod):
    """Average of the members' softmax outputs, each upsampled to the label size.

    Args:
        checkpoints: local paths of the members: udaseg/Lightning checkpoints or released plain
            DeepLabV2 state dicts (e.g. `GTA2Cityscapes_AdvEnt.pth`); all built with `segmenter`
            (`udaseg.models.DualClassifierDeepLab` for CLAN members).
        member_weights: optional per-member weights (normalised), equal by default.
        **kwargs: `UDAMethod` arguments (`segmenter` describes the members' architecture).
    """

    def __init__(self, checkpoints: list[str], member_weights: Optional[list[float]] = None,
                 **kwargs) -> None:
        if len(checkpoints) < 2:
            raise ValueError("Ensemble needs at least two checkpoints")
        if member_weights is not None and len(member_weights) != len(checkpoints):
            raise ValueError(f"Ensemble got {len(member_weights)} member_weights for "
                             f"{len(checkpoints)} checkpoints")
        super().__init__(**kwargs)

    def build_segmenter(self) -> nn.Module:
        members = nn.ModuleList()
        for path in self.hparams.checkpoints:
            member = build_segmenter(self.hparams.segmenter, self.num_classes)
            load_segmenter_checkpoint(member, path)
            members.append(member.eval())
        return members

    @property
    def has_trained_weights(self) -> bool:
        return True  # every member is loaded from its checkpoint

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        raise RuntimeError("Ensemble is for `udaseg validate` / `udaseg test` only")

    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        raise RuntimeError("Ensemble is for `udaseg validate` / `udaseg test` only")

    def logits_at(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Log of the weighted mean of the members' softmax outputs.

        A log-probability is a valid logit: its argmax is the ensemble's prediction and its
        softmax gives back the averaged probabilities, which is what entropy maps and any other
        caller that applies a softmax need.
        """
        weights = self.hparams.member_weights or [1.0] * len(self.segmenter)
        total = sum(weights)
        probability = sum(weight / total * F.softmax(upsample_logits(member(images)[MAIN], size),
                                                      dim=1)
                          for weight, member in zip(weights, self.segmenter, strict=True))
        return torch.log(probability.clamp_min(1e-30))
