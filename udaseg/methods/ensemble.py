"""Evaluate the average softmax of several trained segmenters (ADVENT's best GTA5 result, 45.5,
averages an AdvEnt and a MinEnt model). Evaluation only: `udaseg validate|test` with this method
and no `--ckpt_path`."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.losses import upsample_logits
from udaseg.methods.base import UDAMethod, segmenter_network
from udaseg.models import load_segmenter_checkpoint


class Ensemble(UDAMethod):
    """Average of the members' softmax outputs, each upsampled to the label size.

    Args:
        checkpoints: local paths of the members: udaseg/Lightning checkpoints or released plain
            DeepLabV2 state dicts (e.g. `GTA2Cityscapes_AdvEnt.pth`); all built with `segmenter`
            (`architecture: dual_classifier` for CLAN members).
        weights: optional per-member weights (normalised), equal by default.
        **kwargs: `UDAMethod` arguments (`segmenter` describes the members' architecture).
    """

    def __init__(self, checkpoints: list[str], weights: Optional[list[float]] = None,
                 **kwargs) -> None:
        if len(checkpoints) < 2:
            raise ValueError("Ensemble needs at least two checkpoints")
        if weights is not None and len(weights) != len(checkpoints):
            raise ValueError(f"Ensemble got {len(weights)} weights for "
                             f"{len(checkpoints)} checkpoints")
        self.checkpoints = list(checkpoints)
        total = sum(weights) if weights else len(checkpoints)
        self.member_weights = [w / total for w in (weights or [1.0] * len(checkpoints))]
        super().__init__(**kwargs)

    def build_segmenter(self) -> nn.Module:
        config = self.segmenter_config
        members = nn.ModuleList()
        for path in self.checkpoints:
            member = segmenter_network(config, self.num_classes)
            load_segmenter_checkpoint(member, path)
            members.append(member.eval())
        return members

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        raise RuntimeError("Ensemble is for `udaseg validate` / `udaseg test` only")

    def predict_logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Returns averaged probabilities (argmax-compatible with logits)."""
        probabilities = [weight * F.softmax(upsample_logits(member(images).main, size), dim=1)
                         for weight, member in zip(self.member_weights, self.segmenter)]
        return torch.stack(probabilities).sum(dim=0)
