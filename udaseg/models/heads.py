"""Decode heads: an encoder's stage outputs (strides 4, 8, 16, 32) -> logits at stride 4.

- `SegFormerHead` (Xie et al., "SegFormer", NeurIPS 2021): the all-MLP head. Each stage is
  embedded by one linear layer over channels, upsampled to the first stage's size, the stages
  are concatenated and fused by a 1x1 conv + BN + ReLU. With `embed_dims=256` it is DAFormer's
  "SegF. C_e=256" baseline and HRDA's scale-attention head (DAFormer's head with 1x1 fusion).
- `DAFormerHead` (Hoyer et al., "DAFormer", CVPR 2022): the same embedding, fused by a
  context-aware, depthwise-separable ASPP.

Both read any encoder: `in_channels` are its `out_channels`. Parameter names follow DAFormer's
mmseg code (`embed_layers.<i>.proj`, `fuse_layer`, `conv_seg`, BN layers `bn`), so a
checkpoint of that code maps onto them key by key (SegFormer's own code names the same layers
`linear_c<i>`, `linear_fuse`, `linear_pred`). Initialisation as there: He (fan-out) for the
convs, PyTorch's default for the linear embeddings, N(0, 0.01) for the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    """Bias-free conv (SAME size at stride 1), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depthwise 3x3 (dilated) conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(in_channels, in_channels, 3, dilation,
                                         groups=in_channels)
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SeparableASPP(nn.Module):
    """DAFormer's context-aware fusion: parallel branches, concatenated, then a 3x3 bottleneck.

    A dilation-1 branch is a plain 1x1 conv; the others are depthwise-separable 3x3 convs
    with that dilation (every conv followed by BN + ReLU). No image-pooling branch.
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(in_channels, channels, 1) if dilation == 1
            else SeparableConvBNReLU(in_channels, channels, dilation) for dilation in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class LinearEmbedding(nn.Module):
    """One linear layer over channels at every pixel, without norm or activation (SegFormer's
    "MLP"): (N, C, h, w) -> (N, embed_dims, h, w)."""

    def __init__(self, in_channels: int, embed_dims: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels last for the matmul: no copy for channels-last inputs (MiT's stage outputs).
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _check_head_arguments(name: str, in_channels: Sequence[int], num_classes: int,
                          dropout: float, **sizes: int) -> None:
    if not in_channels or any(int(c) != c or c < 1 for c in in_channels):
        raise ValueError(f"{name}: in_channels must be positive channel counts, one per encoder "
                         f"stage, got {in_channels!r}")
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be positive, got {num_classes}")
    if not 0 <= dropout < 1:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
    for key, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name}: {key} must be positive, got {value}")


class _StageFusionHead(nn.Module):
    """Embed each stage, upsample to the first stage's size, concatenate in stage order, fuse
    (`fuse_layer`), dropout, 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dims: int,
                 channels: int, dropout: float, fuse_layer: nn.Module) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.num_classes = num_classes
        self.embed_layers = nn.ModuleList(LinearEmbedding(c, embed_dims) for c in in_channels)
        self.fuse_layer = fuse_layer
        # Dropout2d (whole channels), as mmseg's decode heads use.
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage outputs [(N, in_channels[i], h_i, w_i)], finest first -> (N, num_classes,
        h_0, w_0) logits."""
        if len(features) != len(self.embed_layers):
            raise ValueError(f"{type(self).__name__} was built for {len(self.embed_layers)} "
                             f"stages (in_channels {self.in_channels}), got {len(features)} "
                             "feature maps")
        size = features[0].shape[-2:]
        embedded = []
        for feature, embed in zip(features, self.embed_layers, strict=True):
            x = embed(feature)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            embedded.append(x)
        return self.conv_seg(self.dropout(self.fuse_layer(torch.cat(embedded, dim=1))))


class SegFormerHead(_StageFusionHead):
    """SegFormer's all-MLP decode head (see the module docstring).

    Args:
        in_channels: channels of each encoder stage, finest first (the encoder's
            `out_channels`).
        num_classes: number of output classes.
        embed_dims: channels of each stage's embedding and of the fusion output. SegFormer-B5
            uses 768; DAFormer's SegFormer baseline and HRDA's attention head 256.
        dropout: channel dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dims: int = 256,
                 dropout: float = 0.1) -> None:
        _check_head_arguments(type(self).__name__, in_channels, num_classes, dropout,
                              embed_dims=embed_dims)
        super().__init__(in_channels, num_classes, embed_dims, embed_dims, dropout,
                         ConvBNReLU(len(in_channels) * embed_dims, embed_dims, 1))


class DAFormerHead(_StageFusionHead):
    """DAFormer's decode head with context-aware feature fusion (see the module docstring).

    With MiT-B5's stages (64, 128, 320, 512) and 19 classes: 3,712,275 parameters.

    Args:
        in_channels: channels of each encoder stage, finest first (the encoder's
            `out_channels`).
        num_classes: number of output classes.
        embed_dims: channels of each stage's linear embedding (the ASPP reads
            `len(in_channels) * embed_dims`).
        channels: channels of every ASPP branch and of the bottleneck output.
        dilations: dilations of the ASPP branches (1: a plain 1x1 conv branch).
        dropout: channel dropout before the classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dims: int = 256,
                 channels: int = 256, dilations: Sequence[int] = (1, 6, 12, 18),
                 dropout: float = 0.1) -> None:
        _check_head_arguments(type(self).__name__, in_channels, num_classes, dropout,
                              embed_dims=embed_dims, channels=channels)
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"{type(self).__name__}: dilations must be positive, got "
                             f"{dilations!r}")
        super().__init__(in_channels, num_classes, embed_dims, channels, dropout,
                         SeparableASPP(len(in_channels) * embed_dims, channels, dilations))
