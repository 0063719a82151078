"""CLAN's generator: two DeepLabV2 classifiers on the same layer4 features.

Luo, Zheng, Guan, Yu, Yang, "Taking a Closer Look at Domain Shift: Category-level Adversaries
for Semantics Consistent Domain Adaptation", CVPR 2019 (official code: RoyalVane/CLAN,
`model/CLAN_G.py`). The backbone is the same dilated ResNet as `DeepLabV2`; only the head differs:
`layer5` and `layer6` are both ASPP-sum classifiers on layer4 (2048 channels for ResNet-101),
which is also how the official state dict names them, so its checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.models.deeplabv2 import CLASSIFIER_MODULES, ClassifierASPP
from udaseg.models.resnet import ResNetBackbone
from udaseg.models.segmenter import MAIN, SegmenterOutput

#: Heads of the two classifiers (`layer5`, `layer6`); "main" is their sum.
FIRST, SECOND = "first", "second"


class DualClassifierDeepLab(ResNetBackbone):
    """Dilated ResNet with two independent ASPP-sum classifiers on layer4 (CLAN generator).

    Heads: "first" (`layer5`) and "second" (`layer6`), and "main" = first + second, the official
    CLAN prediction (so evaluation, prediction and `Ensemble` need nothing special). There is no
    "aux" head. `classifier_pair()` gives the two classifiers (CLAN's weight-discrepancy loss).

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
        self.heads = (MAIN, FIRST, SECOND)

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) normalised images -> {"first", "second", "main"}: 1/8-resolution logits."""
        _, features = self.forward_features(images)
        first, second = self.layer5(features), self.layer6(features)
        return {MAIN: first + second, FIRST: first, SECOND: second}

    def classifier_pair(self) -> tuple[nn.Module, nn.Module]:
        """The two classifiers whose weights CLAN keeps apart (`layer5`, `layer6`)."""
        return self.layer5, self.layer6

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of both classifiers (the 10x LR group), each exactly once."""
        return [p for name in CLASSIFIER_MODULES for p in getattr(self, name).parameters()
                if p.requires_grad]
