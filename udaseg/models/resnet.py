"""Dilated ResNet backbone in the layout of the Caffe-converted DeepLab ResNet (output stride 8).

Module and parameter names follow the official DeepLabV2 UDA code (AdaptSegNet, ADVENT, CLAN),
so released checkpoints and the `Scale.`-prefixed ImageNet init load without renaming. Segmenters
on it (`DeepLabV2`, CLAN's `DualClassifierDeepLab`) subclass `ResNetBackbone`, which keeps
`conv1`, `bn1` and `layer1..4` at the top level of their state dict and reads ImageNet weights
in two formats: a torchvision ResNet state dict, or the official Caffe-converted
`DeepLab_resnet_pretrained_imagenet.pth` (keys prefixed `Scale.`).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Union

import torch
from torch import nn

from udaseg.models.segmenter import Segmenter, he_init_
from udaseg.models.weights import WeightsError, compare_state, listing, mismatch_message

#: Top-level module names that make up the backbone (the 1x learning-rate group).
BACKBONE_MODULES: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def frozen_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with affine weight/bias excluded from training, as in the official DeepLab code.

    Only `requires_grad` is switched off: in `train()` mode the layer still normalises with batch
    statistics and updates its running stats (the official loops rely on that).
    """
    bn = nn.BatchNorm2d(channels, affine=True)
    for param in bn.parameters():
        param.requires_grad = False
    return bn


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv whose padding equals its dilation, so stride-1 convs keep the spatial size."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride,
                     padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Used only for light backbones; there is no official init."""

    expansion: ClassVar[int] = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride=stride, dilation=dilation)
        self.bn1 = frozen_bn(planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = frozen_bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 block of the Caffe-converted DeepLab ResNet.

    Unlike torchvision (stride on the 3x3), the stride sits on the first 1x1 conv; tensor shapes
    are the same either way, so torchvision weights still load (with slightly different features).
    """

    expansion: ClassVar[int] = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes, stride=stride)
        self.bn1 = frozen_bn(planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = frozen_bn(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = frozen_bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[type[BasicBlock], type[Bottleneck]]

#: depth -> (block type, blocks per layer)
ARCHITECTURES: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def make_layer(block: Block, in_channels: int, planes: int, num_blocks: int,
               stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """One ResNet stage. Its first block always gets a conv1x1+BN `downsample` branch.

    The official code adds one to every stage (its layer3/layer4 condition tests the dilation),
    so `layerN.0.downsample.*` keys always exist; we do the same for BasicBlock for consistency.
    """
    out_channels = planes * block.expansion
    downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), frozen_bn(out_channels))
    blocks: list[nn.Module] = [block(in_channels, planes, stride, dilation, downsample)]
    blocks += [block(out_channels, planes, dilation=dilation) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


ResNetFormat = Literal["torchvision", "deeplab"]


def _detect_format(keys: list[str], source: str) -> ResNetFormat:
    if "conv1.weight" in keys:
        return "torchvision"
    if all("." in k for k in keys) and any(k.split(".", 1)[1] == "conv1.weight" for k in keys):
        return "deeplab"
    raise WeightsError(f"cannot tell the format of {source}: no `conv1.weight` or `<prefix>."
                       f"conv1.weight` key (first keys: {listing(keys[:5])})")


def _backbone_from_file(state: dict[str, torch.Tensor],
                        fmt: ResNetFormat) -> dict[str, torch.Tensor]:
    """Rename to our keys and keep only backbone tensors (drop `fc.*` or DeepLab's `layer5.*`)."""
    if fmt == "deeplab":  # the official loader drops the first key component (`Scale.`)
        state = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in BACKBONE_MODULES}


class ResNetBackbone(Segmenter):
    """DeepLab ResNet with output stride 8: layer3/layer4 use dilation 2/4 instead of stride.

    Args:
        depth: 18 or 34 (BasicBlock), 50 or 101 (Bottleneck, DeepLabV2 uses 101).
        width: stem channels; stages have width, 2w, 4w, 8w planes (times the block expansion).
            64 is the real network; e.g. 16 gives a very light backbone for CPU tests.

    `forward_features` returns the (layer3, layer4) feature maps, both at 1/8 resolution, with
    `out_channels` channels (1024, 2048 for ResNet-50/101 at width 64).
    """

    pretrained_formats: ClassVar[tuple[str, ...]] = ("torchvision", "deeplab")

    def __init__(self, depth: int = 101, width: int = 64) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        block, counts = ARCHITECTURES[depth]
        self.depth = depth
        self.width = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_bn(width)
        self.relu = nn.ReLU(inplace=True)
        # ceil_mode=True as in the Caffe model: this is why outputs are H/8 + 1, not H/8.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        e = block.expansion
        self.layer1 = make_layer(block, width, width, counts[0])
        self.layer2 = make_layer(block, width * e, width * 2, counts[1], stride=2)
        self.layer3 = make_layer(block, width * 2 * e, width * 4, counts[2], dilation=2)
        self.layer4 = make_layer(block, width * 4 * e, width * 8, counts[3], dilation=4)
        self.out_channels: tuple[int, int] = (width * 4 * e, width * 8 * e)
        self._init_backbone()

    def _init_backbone(self) -> None:
        """He init for convs, BN at identity. Only matters when no ImageNet init is loaded
        (light CPU backbones); the official code's normal(0, 0.01) is fine only because BN follows.
        """
        he_init_(*(getattr(self, name) for name in BACKBONE_MODULES))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) images -> (layer3, layer4) features at output stride 8."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer2(self.layer1(x))
        feat3 = self.layer3(x)
        feat4 = self.layer4(feat3)
        return feat3, feat4

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (frozen BN affine excluded), each exactly once."""
        return [p for name in BACKBONE_MODULES
                for p in getattr(self, name).parameters() if p.requires_grad]

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load ImageNet backbone weights (torchvision or DeepLab `Scale.` format) in place.

        Every backbone tensor of the model must be in the file with the same shape (BN
        `num_batches_tracked` counters may be absent); classifier keys in the file are ignored.
        Returns the model's state-dict keys left untouched: the classifiers, plus any
        `num_batches_tracked` counters the file did not have.
        """
        resolved: ResNetFormat = _detect_format(list(state), source) if fmt == "auto" else fmt
        incoming = _backbone_from_file(state, resolved)
        target = self.state_dict()
        wanted = [k for k in target if k.split(".", 1)[0] in BACKBONE_MODULES]
        missing, unexpected, mismatched = compare_state(target, incoming, wanted)
        if missing or unexpected or mismatched:
            raise WeightsError(mismatch_message(
                f"{source} ({resolved} format) does not fit the model's backbone", missing,
                unexpected, mismatched))
        self.load_state_dict({**target, **incoming}, strict=True)
        return [k for k in target if k not in incoming]
