"""Fully-convolutional domain discriminator of AdaptSegNet / ADVENT.

Vu et al., "ADVENT: Adversarial Entropy Minimization for Domain Adaptation in Semantic
Segmentation", CVPR 2019 (official code: valeoai/ADVENT, `advent/model/discriminator.py`);
the architecture comes from Tsai et al., "Learning to Adapt Structured Output Space for Semantic
Segmentation" (AdaptSegNet), CVPR 2018.
"""

from __future__ import annotations

from torch import nn


class FCDiscriminator(nn.Sequential):
    """Five 4x4 convolutions, stride 2, padding 1, with LeakyReLU(0.2) between them.

    Channels `in_channels -> w -> 2w -> 4w -> 8w -> 1` (w = `width`, 64 in the paper:
    C-64-128-256-512-1), all convs with bias, no normalisation, no activation after the last
    conv: the output is a map of logits (N, 1, h, w) for an input (N, in_channels, H, W), each
    conv halving the size (`h = H / 32` when H is a multiple of 32:
    (2, 19, 64, 128) -> (2, 1, 2, 4)).
    In ADVENT the input is the weighted self-information map `entropy_map(softmax(z))` of the
    upsampled prediction and `in_channels` = number of classes.

    A `nn.Sequential` with the official layout, so state_dict keys are the official ones
    (`0.weight`, `2.weight`, `4.weight`, `6.weight`, `8.weight` and their biases).
    2,781,121 parameters for in_channels=19, width=64.
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        channels = [in_channels, width, width * 2, width * 4, width * 8, 1]
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            if index > 0:
                layers.append(nn.LeakyReLU(negative_slope=0.2))
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
        super().__init__(*layers)
        self.in_channels = in_channels
        self.width = width
