"""CLAN's generator: two DeepLabV2 classifiers on the same layer4 features.

Luo, Zheng, Guan, Yu, Yang, "Taking a Closer Look at Domain Shift: Category-level Adversaries
for Semantics Consistent Domain Adaptation", CVPR 2019 (official code: RoyalVane/CLAN,
`model/CLAN_G.py`). The backbone is the same dilated ResNet as `DeepLabV2`; only the head differs:
`layer5` and `layer6` are both ASPP-sum classifiers on layer4 (2048 channels for ResNet-101),
which is also how the official state dict names them, so its checkpoints load without renaming.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from udaseg.models.deeplabv2 import CLASSIFIER_MODULES, ClassifierASPP
from udaseg.models.resnet import ResNetBackbone


class DualOutput(NamedTuple):
    """Logits of the two classifiers at 1/8 resolution, each (N, num_classes, h, w).

    `first` comes from `layer5`, `second` from `layer6`. `main` is their sum, the official CLAN
    prediction, so evaluation code written for `SegOutput` (`.main`, `.aux`) works unchanged;
    `aux` is always None (there is no layer3 classifier).
    """

    first: torch.Tensor
    second: torch.Tensor

    @property
    def main(self) -> torch.Tensor:
        return self.first + self.second

    @property
    def aux(self) -> Optional[torch.Tensor]:
        return None


class DualClassifierDeepLab(ResNetBackbone):
    """Dilated ResNet with two independent ASPP-sum classifiers on layer4 (CLAN generator).

    Args:
        num_classes: number of output classes.
        depth, width: backbone size, as for `DeepLabV2` (101 and 64 in the paper).
        aspp_dilations: dilations of each classifier's summed 3x3 branches, (6, 12, 18, 24) in
            the official code (all four summed).

    Both classifiers get the official normal(0, 0.01) weight init, independently drawn, so they
    start different: the weight-discrepancy loss only has to keep them apart.
    """

    def __init__(self, num_classes: int = 19, depth: int = 101, width: int = 64,
                 aspp_dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__(depth=depth, width=width)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.aspp_dilations = tuple(aspp_dilations)
        layer4_channels = self.out_channels[1]
        self.layer5 = ClassifierASPP(layer4_channels, num_classes, self.aspp_dilations)
        self.layer6 = ClassifierASPP(layer4_channels, num_classes, self.aspp_dilations)

    def forward(self, images: torch.Tensor) -> DualOutput:
        """(N, 3, H, W) normalised images -> DualOutput of 1/8-resolution logits."""
        _, features = self.forward_features(images)
        return DualOutput(first=self.layer5(features), second=self.layer6(features))

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of both classifiers (the 10x LR group), each exactly once."""
        return [p for name in CLASSIFIER_MODULES for p in getattr(self, name).parameters()
                if p.requires_grad]
