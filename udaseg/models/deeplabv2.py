"""DeepLabV2 segmenter (ResNet + ASPP-sum classifiers) with the official ADVENT key names.

Output size: logits come out at output stride 8, but the ceil-mode maxpool adds one row/column:
for an input height (or width) H the logits have `ceil((floor(ceil(H / 2) / 2) + 1) / 2)` rows,
which is `H / 8 + 1` whenever H is a multiple of 8 (512x1024 -> 65x129, 720x1280 -> 91x161).
Losses and evaluation upsample the logits to the label size, so this never needs cropping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from udaseg.models.resnet import ResNetBackbone
from udaseg.models.segmenter import AUX, MAIN, SegmenterOutput

#: Top-level module names of the classifiers (the 10x learning-rate group).
CLASSIFIER_MODULES: tuple[str, ...] = ("layer5", "layer6")


def seg_output_size(size: int) -> int:
    """Logit rows (or columns) produced for an input of `size` rows (or columns); see module doc."""
    conv1 = (size - 1) // 2 + 1           # 7x7, stride 2, padding 3
    pool = -(-(conv1 - 1) // 2) + 1       # 3x3, stride 2, padding 1, ceil_mode=True
    return (pool - 1) // 2 + 1            # layer2's strided 1x1 conv; layer3/4 keep the size


class ClassifierASPP(nn.Module):
    """DeepLabV2 classifier: parallel dilated 3x3 convs (with bias) whose outputs are summed.

    All branches are summed, as in ADVENT and CLAN. `summed_branches=2` reproduces the
    AdaptSegNet/MaxSquare code, whose `return` inside the summing loop uses only the first two
    (dilations 6 and 12): every conv still exists, so their checkpoints load key for key.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int],
                 summed_branches: Optional[int] = None) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("ClassifierASPP needs at least one dilation")
        if summed_branches is not None and not 1 <= summed_branches <= len(dilations):
            raise ValueError(f"summed_branches must be between 1 and {len(dilations)}, "
                             f"got {summed_branches}")
        self.summed_branches = summed_branches or len(dilations)
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.conv2d_list:
            # Official init: weights normal(0, 0.01); biases keep PyTorch's default init.
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](features)
        for conv in self.conv2d_list[1:self.summed_branches]:
            out = out + conv(features)
        return out


class DeepLabV2(ResNetBackbone):
    """DeepLabV2 with an optional auxiliary classifier, state-dict compatible with ADVENT.

    Heads: "main" (`layer6` on layer4) and, if `multi_level`, "aux" (`layer5` on layer3), both
    at output stride 8.

    Args:
        num_classes: number of output classes (19 for Cityscapes, 16/13 for SYNTHIA runs).
        multi_level: add the auxiliary classifier `layer5` on layer3 features (ADVENT, MaxSquare,
            AdaptSegNet). If False the model has no `layer5` at all and `aux` is None.
        depth: ResNet depth, 18/34/50/101; the paper and all released weights use 101.
        width: stem channels (64 for the real network); smaller values give light CPU models.
        aspp_dilations: dilations of the summed 3x3 classifier branches, (6, 12, 18, 24) in the
            paper.
        aspp_summed_branches: how many of them are summed (all by default; 2 = the
            AdaptSegNet/MaxSquare code's behaviour, see `ClassifierASPP`).

    With the defaults the state dict has 640 entries (328 parameters, 312 BN buffers) and the
    model has 44,601,560 parameters, exactly like the official `get_deeplab_v2()`.
    """

    def __init__(self, num_classes: int = 19, multi_level: bool = True, depth: int = 101,
                 width: int = 64, aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
                 aspp_summed_branches: Optional[int] = None) -> None:
        super().__init__(depth=depth, width=width)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.aspp_dilations = tuple(aspp_dilations)
        layer3_channels, layer4_channels = self.out_channels
        self.layer5: Optional[ClassifierASPP] = (
            ClassifierASPP(layer3_channels, num_classes, self.aspp_dilations, aspp_summed_branches)
            if multi_level else None
        )
        self.layer6 = ClassifierASPP(layer4_channels, num_classes, self.aspp_dilations,
                                     aspp_summed_branches)
        self.heads = (MAIN, AUX) if multi_level else (MAIN,)

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) normalised images -> {"main", "aux"}: 1/8-resolution logits."""
        feat3, feat4 = self.forward_features(images)
        if self.layer5 is None:
            return {MAIN: self.layer6(feat4)}
        # aux first, as always: the order fixes how autograd sums the two gradients into feat3
        aux = self.layer5(feat3)
        return {MAIN: self.layer6(feat4), AUX: aux}

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Trainable classifier parameters (`layer5` if present, `layer6`), each exactly once."""
        heads = [getattr(self, name) for name in CLASSIFIER_MODULES]
        return [p for head in heads if head is not None for p in head.parameters()
                if p.requires_grad]
