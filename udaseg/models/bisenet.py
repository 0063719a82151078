"""BiSeNet V1: the light real-time segmenter of the TUFL paper's Cityscapes -> Cross-City runs.

Yu et al., "BiSeNet: Bilateral Segmentation Network for Real-time Semantic Segmentation", ECCV
2018, as implemented by the public TUFL code (ywher/TUFL, `unsup/model.py` and `unsup/resnet.py`,
itself a variant of the CoinCheung BiSeNet re-implementation):

- context path: ResNet-18 giving 1/8 (128 ch), 1/16 (256 ch) and 1/32 (512 ch) features;
  Attention Refinement Modules on 1/32 and 1/16 (to 128 ch), the global-average-pooled 1/32
  context added to the ARM-32 output; 1/32 upsampled (nearest) to 1/16 and refined by a 3x3
  ConvBNReLU, added to ARM-16, upsampled to 1/8 and refined again;
- spatial path: its own three stride-2 ConvBNReLU (7x7, 3x3, 3x3; 64 ch) and a 1x1 to 128 ch,
  at 1/8. TUFL builds this separate path (later CoinCheung versions reuse the ResNet 1/8
  feature instead); we follow TUFL;
- Feature Fusion Module on the concatenated spatial + context features (256 ch), with channel
  attention (256 -> 64 -> 256) and a residual `feat + feat * attention`.

Heads: "main" on the fused features; "context16" on the refined 1/8 context feature (16 path)
and "context32" on the refined 1/16 one (32 path), the deep supervision of the paper. All three
come out at 1/8 of the input (ceil), logits not upsampled: udaseg's methods upsample themselves
(the 1/16 auxiliary logits are brought to 1/8 here, bilinear, align_corners=True, so every head
has the same size; TUFL upsamples each head straight to the input size). TUFL's supervised loss
and its unsupervised (entropy / focal) loss both average the three heads: (L(main) +
L(context16) + L(context32)) / 3.

Faithful to TUFL's layers in detail: its BatchNorm is inplace-abn's `InPlaceABNSync`, whose
default activation is leaky ReLU with slope 0.01, so every ConvBNReLU, the ResNet stem and the
first conv of each residual block use leaky ReLU 0.01 (`negative_slope`; 0 gives CoinCheung's
plain ReLU); the ARM attention BN, the residual second BN and shortcut BN have none. The
residual sum is followed by a plain ReLU, as in torchvision.

State-dict keys are TUFL's (`cp.resnet.*`, `cp.arm16.*`, `sp.*`, `ffm.*`, `conv_out.*`,
`conv_out16.*`, `conv_out32.*`, residual shortcuts `downsample_conv` / `downsample_bn`), so a
TUFL checkpoint (e.g. its Cityscapes-trained BiSeNet) should load with `weights.init_checkpoint`
when the class count matches (not tried on a real file). ImageNet init: a torchvision
`resnet18` state dict (`weights.pretrained`, format "torchvision"; `downsample.0/1` renamed,
`fc.*` ignored).

Parameters (`context_channels=128`, `fusion_channels=256`): 13,392,384 for 19 classes and
13,390,080 for 13 classes; of these 11,176,512 are the ResNet-18 (torchvision's without `fc`)
and 2,215,872 / 2,213,568 the rest. The layer sizes are TUFL's, so the counts are its model's.

Training needs batch statistics over more than one value per channel in the pooled-context
BNs (ARMs, `conv_avg`): a training batch of one image fails, as it would in TUFL's network
(whose batches hold source and target images together; its recipe also freezes BN).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.models.segmenter import MAIN, Segmenter, SegmenterOutput, he_init_
from udaseg.models.weights import WeightsError, compare_state, mismatch_message

#: Auxiliary heads: on the refined context feature of the 1/16 path (at 1/8) and of the 1/32
#: path (at 1/16).
CONTEXT16 = "context16"
CONTEXT32 = "context32"
#: Middle channels of the auxiliary heads (TUFL's `BiSeNetOutput(128, 64, n)`).
AUX_HEAD_CHANNELS = 64
#: Top-level module holding the ImageNet-initialised ResNet-18 (the backbone group).
RESNET_PREFIX = "cp.resnet."
#: torchvision ResNet module names -> ours (TUFL's names for the shortcut branch).
_TORCHVISION_RENAMES = {".downsample.0.": ".downsample_conv.", ".downsample.1.": ".downsample_bn."}


class ConvBNReLU(nn.Module):
    """Bias-free kxk conv (size-keeping padding), BN, leaky ReLU (`slope` 0 = ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 slope: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), self.slope)


class ResidualBlock(nn.Module):
    """ResNet BasicBlock; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.slope = slope
        self.downsample_conv = self.downsample_bn = None
        if stride != 1 or in_channels != out_channels:
            self.downsample_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            self.downsample_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.leaky_relu(self.bn1(self.conv1(x)), self.slope)))
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x))
        return F.relu(out + x)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout without `fc`: -> (1/8, 1/16, 1/32) features."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.slope = slope
        widths = (64, 64, 128, 256, 512)
        for index in range(1, 5):
            stride = 1 if index == 1 else 2
            self.add_module(f"layer{index}", nn.Sequential(
                ResidualBlock(widths[index - 1], widths[index], stride, slope),
                ResidualBlock(widths[index], widths[index], 1, slope)))
        he_init_(self)  # only matters without the ImageNet file

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.leaky_relu(self.bn1(self.conv1(x)), self.slope))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    """3x3 ConvBNReLU, then reweight its channels by sigmoid(BN(1x1 conv(global pool)))."""

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3, slope=slope)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(global_pool(feat))))


class ContextPath(nn.Module):
    """ResNet-18 + ARMs + global context -> refined context at (1/8, 1/16)."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        self.resnet = ResNet18(slope)
        self.arm16 = AttentionRefinement(256, channels, slope)
        self.arm32 = AttentionRefinement(512, channels, slope)
        self.conv_head32 = ConvBNReLU(channels, channels, 3, slope=slope)
        self.conv_head16 = ConvBNReLU(channels, channels, 3, slope=slope)
        self.conv_avg = ConvBNReLU(512, channels, 1, slope=slope)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(images)
        # The pooled context is 1x1: broadcasting is its nearest upsampling to 1/32.
        feat32 = self.arm32(feat32) + self.conv_avg(global_pool(feat32))
        refined16 = self.conv_head32(F.interpolate(feat32, size=feat16.shape[-2:],
                                                   mode="nearest"))
        feat16 = self.arm16(feat16) + refined16
        refined8 = self.conv_head16(F.interpolate(feat16, size=feat8.shape[-2:], mode="nearest"))
        return refined8, refined16


class SpatialPath(nn.Module):
    """Three stride-2 ConvBNReLU (7x7, 3x3, 3x3; 64 ch) and a 1x1 to `channels`: 1/8."""

    def __init__(self, channels: int, slope: float) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, 2, slope)
        self.conv2 = ConvBNReLU(64, 64, 3, 2, slope)
        self.conv3 = ConvBNReLU(64, 64, 3, 2, slope)
        self.conv_out = ConvBNReLU(64, channels, 1, slope=slope)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv3(self.conv2(self.conv1(images))))


class FeatureFusion(nn.Module):
    """concat -> 1x1 ConvBNReLU; out = feat + feat * channel attention (squeeze by 4)."""

    def __init__(self, in_channels: int, out_channels: int, slope: float) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1, slope=slope)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(global_pool(feat)))))
        return feat + feat * attention


class OutputHead(nn.Module):
    """BiSeNet's output block: 3x3 ConvBNReLU to `mid_channels`, 1x1 conv to the classes."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int,
                 slope: float) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3, slope=slope)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(Segmenter):
    """BiSeNet V1 with a ResNet-18 context path (see the module docstring).

    Args:
        num_classes: number of output classes.
        context_channels: width of the ARMs, the context refinements and the spatial path's
            output (TUFL: 128); the fusion module reads twice that.
        fusion_channels: width of the fusion module and the main head's middle conv (256).
        negative_slope: leaky ReLU slope of the ConvBNReLU blocks, the stem and the first conv
            of each residual block: 0.01 is TUFL (inplace-abn's default), 0 a plain ReLU.

    Heads "main", "context16", "context32", all (N, num_classes, ceil(H/8), ceil(W/8)).
    `backbone_parameters()` is the ResNet-18 (BN affine included: BN trains), and
    `classifier_parameters()` all the rest (spatial path, ARMs, context convs, fusion, heads),
    which start from kaiming_normal_(a=1) as in TUFL/CoinCheung. (TUFL's own optimiser puts
    only the fusion module and heads in its 10x group, but its `lr_mul` lookup defaults to
    True, so every parameter gets 10x the base rate there.)
    """

    pretrained_formats: ClassVar[tuple[str, ...]] = ("torchvision",)

    def __init__(self, num_classes: int = 19, context_channels: int = 128,
                 fusion_channels: int = 256, negative_slope: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if context_channels < 1 or fusion_channels < 4:
            raise ValueError("context_channels must be >= 1 and fusion_channels >= 4, got "
                             f"{context_channels} and {fusion_channels}")
        self.num_classes = num_classes
        self.heads = (MAIN, CONTEXT16, CONTEXT32)
        slope = negative_slope
        self.cp = ContextPath(context_channels, slope)
        self.sp = SpatialPath(context_channels, slope)
        self.ffm = FeatureFusion(2 * context_channels, fusion_channels, slope)
        self.conv_out = OutputHead(fusion_channels, fusion_channels, num_classes, slope)
        self.conv_out16 = OutputHead(context_channels, AUX_HEAD_CHANNELS, num_classes, slope)
        self.conv_out32 = OutputHead(context_channels, AUX_HEAD_CHANNELS, num_classes, slope)
        for module in self._classifier_modules():
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, a=1)

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) ImageNet-normalised images -> {head: logits at 1/8}."""
        context8, context16 = self.cp(images)
        main = self.conv_out(self.ffm(self.sp(images), context8))
        aux32 = F.interpolate(self.conv_out32(context16), size=main.shape[-2:],
                              mode="bilinear", align_corners=True)
        return {MAIN: main, CONTEXT16: self.conv_out16(context8), CONTEXT32: aux32}

    def _classifier_modules(self) -> list[nn.Module]:
        context = [m for name, m in self.cp.named_children() if name != "resnet"]
        return [*context, self.sp, self.ffm, self.conv_out, self.conv_out16, self.conv_out32]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.cp.resnet.parameters() if p.requires_grad]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._classifier_modules() for p in m.parameters() if p.requires_grad]

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load a torchvision `resnet18` state dict into the context path's ResNet, in place.

        Every ResNet tensor must be in the file with the same shape (BN `num_batches_tracked`
        counters may be absent); `fc.*` is ignored. Returns the keys left untouched: the
        model's keys the file did not set (everything outside the ResNet, which keeps its
        random init, and any BN counters the file lacks), then the file's ignored `fc.*` keys.
        """
        def ours(key: str) -> str:
            for theirs, mine in _TORCHVISION_RENAMES.items():
                key = key.replace(theirs, mine)
            return RESNET_PREFIX + key

        ignored = [k for k in state if k.startswith("fc.")]
        incoming = {ours(k): v for k, v in state.items() if not k.startswith("fc.")}
        target = self.state_dict()
        wanted = [k for k in target if k.startswith(RESNET_PREFIX)]
        missing, unexpected, mismatched = compare_state(target, incoming, wanted)
        if missing or unexpected or mismatched:
            raise WeightsError(mismatch_message(
                f"{source} (torchvision format, a resnet18 state dict expected) does not fit "
                f"{type(self).__name__}'s ResNet-18 (keys below with the model's "
                f"`{RESNET_PREFIX}` prefix)", missing, unexpected, mismatched))
        self.load_state_dict({**target, **incoming}, strict=True)
        return [k for k in target if k not in incoming] + ignored
