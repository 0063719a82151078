"""`HRDA`: a multi-resolution segmenter with a learned scale attention.

Hoyer, Dai and Van Gool, "HRDA: Context-Aware High-Resolution Domain-Adaptive Semantic
Segmentation", ECCV 2022 (official code lhoyer/HRDA). One encoder and one decode head see the
image twice: a low-resolution *context* view (the whole input, downscaled by `context_scale`)
and a full-resolution *detail* view (a `detail_crop` window). A second head, the scale
attention, reads the context features and predicts a per-class sigmoid weight `a`; the two
predictions are fused on the full-resolution stride-`os` grid (`os` the head's output stride):

    fused = up(a) * detail + up((1 - a) * context)

where `up` upsamples by `1 / context_scale` (bilinear, align_corners=False).

Training (`forward_train`) sees one detail crop (`draw_detail_box`, the same box for the whole
batch); the attention is set to 0 outside the crop on the context grid before it is upsampled.
A quirk of the official code, kept: because of that order, the ring of fused pixels just
outside the crop is `up((1 - a) * context)` with some of the crop's attention blurred into it,
not `up(context)`. Inference (`forward`, also what an EMA teacher calls for pseudo-labels)
covers the whole input with overlapping detail windows and averages their logits, with no mask
on the attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.models.encoder_decoder import (
    _KEY,
    DAFORMER_HEAD,
    MIT_B5_ENCODER,
    EncoderDecoder,
    build_component,
)
from udaseg.models.segmenter import MAIN, SegmenterOutput

#: HRDA's scale-attention head: DAFormer's head with a 1x1 fusion (SegFormer's head, C_e 256).
SCALE_ATTENTION_HEAD: dict[str, Any] = {"class_path": "udaseg.models.SegFormerHead",
                                        "init_args": {"embed_dims": 256}}
#: (y1, y2, x1, x2): rows y1..y2-1 and columns x1..x2-1 in full-resolution pixels.
Box = tuple[int, int, int, int]


@dataclass
class MultiResolutionOutput:
    """What `HRDA.forward_train` returns.

    Attributes:
        fused: (N, C, H/os, W/os) fused logits on the full-resolution stride-`os` grid.
        detail: (N, C, crop_h/os, crop_w/os) logits of the detail crop alone.
        context_features: the encoder's stage outputs on the context image, finest first
            (DAFormer's feature distance reads the last one, as HRDA's `feature_scale` 0.5).
        box: the detail crop (y1, y2, x1, x2) in full-resolution pixels.
        attention: (N, C, h, w) sigmoid attention on the context grid, already 0 outside the
            crop.
    """

    fused: torch.Tensor
    detail: torch.Tensor
    context_features: list[torch.Tensor]
    box: Box
    attention: torch.Tensor


def _pair(value: Any, key: str) -> tuple[int, int]:
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{_KEY}.{key}: expected (height, width), two positive integers, "
                         f"got {value!r}")
    return int(value[0]), int(value[1])


def _scale_box(box: Box, factor: float) -> Box:
    """Box coordinates divided by `factor` and truncated, as the official `scale_box`."""
    y1, y2, x1, x2 = (int(v / factor) for v in box)
    return y1, y2, x1, x2


def _window_spans(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of the detail windows along one side (the official slide grid: every
    `stride`, the last one flush with the end, clipped to the side)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for index in range(count):
        end = min(index * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


class HRDA(EncoderDecoder):
    """HRDA's context + detail segmenter with scale attention (see the module docstring).

    Args:
        num_classes: number of output classes.
        encoder: `{class_path, init_args}` of the encoder (default MiT-B5), shared by both views.
        head: `{class_path, init_args}` of the decode head (default `DAFormerHead`), shared.
        attention_head: `{class_path, init_args}` of the scale-attention head, built like
            `head` with `num_classes` outputs (class-wise attention; default `SegFormerHead`
            with 256 channels, i.e. DAFormer's head with 1x1 fusion).
        context_scale: resize factor of the context view (0.5: half resolution).
        detail_crop: (height, width) of the detail crop and of the inference windows, in
            full-resolution pixels; a multiple of the head's output stride.
        crop_divisible: the training crop's offsets are multiples of this (8 = output stride 4
            / context scale 0.5, so that the crop lies on the context grid).
        detail_stride: (height, width) step of the inference windows; None = half the crop
            (overlapping windows, as officially).
        batch_detail_windows: run all inference windows through the network as one batch (as
            officially); False runs them one at a time (less memory; the same numbers, except
            that train-mode BatchNorm then normalises each window by its own statistics).
        detail_loss_weight: the detail crop's share of the training loss (0.1; the fused
            prediction gets the rest, `udaseg.losses.multi_resolution_loss`).

    `classifier_parameters()` are the head's and the attention head's (officially the attention
    is part of the decode head, so it gets the head's learning-rate multiplier).
    """

    def __init__(self, num_classes: int = 19, encoder: dict[str, Any] = MIT_B5_ENCODER,
                 head: dict[str, Any] = DAFORMER_HEAD,
                 attention_head: dict[str, Any] = SCALE_ATTENTION_HEAD,
                 context_scale: float = 0.5, detail_crop: tuple[int, int] = (512, 512),
                 crop_divisible: int = 8, detail_stride: Optional[tuple[int, int]] = None,
                 batch_detail_windows: bool = True, detail_loss_weight: float = 0.1) -> None:
        if not 0 < context_scale <= 1:
            raise ValueError(f"{_KEY}.context_scale must be in (0, 1], got {context_scale}")
        crop = _pair(detail_crop, "detail_crop")
        if isinstance(crop_divisible, bool) or not isinstance(crop_divisible, int) \
                or crop_divisible < 1:
            raise ValueError(f"{_KEY}.crop_divisible must be a positive integer, got "
                             f"{crop_divisible!r}")
        stride = (crop[0] // 2 or 1, crop[1] // 2 or 1) if detail_stride is None \
            else _pair(detail_stride, "detail_stride")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ValueError(f"{_KEY}.detail_stride {stride} must not exceed "
                             f"{_KEY}.detail_crop {crop}: windows would leave gaps")
        super().__init__(num_classes, encoder, head)
        self.context_scale = float(context_scale)
        self.detail_crop = crop
        self.crop_divisible = crop_divisible
        self.detail_stride = stride
        self.batch_detail_windows = bool(batch_detail_windows)
        if not 0 <= detail_loss_weight <= 1:
            raise ValueError(f"{_KEY}.detail_loss_weight must be in [0, 1], got "
                             f"{detail_loss_weight}")
        self.detail_loss_weight = float(detail_loss_weight)
        self.attention = build_component(attention_head, f"{_KEY}.attention_head",
                                         in_channels=tuple(self.encoder.out_channels),
                                         num_classes=num_classes)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for module in (self.head, self.attention) for p in module.parameters()
                if p.requires_grad]

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load ImageNet weights into the encoder; returns the keys left untouched (the
        encoder's that the file lacks, the head's and the attention head's)."""
        return (super().load_pretrained(state, fmt, source)
                + [f"attention.{key}" for key in self.attention.state_dict()])

    def draw_detail_box(self, height: int, width: int,
                        generator: Optional[torch.Generator]) -> Box:
        """A random detail crop (y1, y2, x1, x2) of `detail_crop` in a `height` x `width` image.

        As the official `get_crop_bbox`: an image of exactly the crop size gives the whole
        image; otherwise each offset is `randint(0, (margin + 1) // d) * d` with `margin` = side
        - crop and `d` = `crop_divisible`, drawn from `generator` (a CPU generator; None = the
        global one), height first. Quirk kept: the offsets stop short of the last position
        (a 1024 side with a 512 crop and d = 8 gives 0, 8, ..., 504, never 512). Where
        `(margin + 1) // d` is 0 (e.g. one side equal to the crop) the offset is 0 (the
        official code raises there).
        """
        crop_h, crop_w = self.detail_crop
        if height < crop_h or width < crop_w:
            raise ValueError(f"{_KEY}.detail_crop {self.detail_crop} is larger than the "
                             f"{height}x{width} training image")
        if (height, width) == (crop_h, crop_w):
            return 0, height, 0, width
        offsets = []
        for side, crop in ((height, crop_h), (width, crop_w)):
            positions = max((side - crop + 1) // self.crop_divisible, 1)
            draw = torch.randint(0, positions, (1,), generator=generator)
            offsets.append(int(draw) * self.crop_divisible)
        return offsets[0], offsets[0] + crop_h, offsets[1], offsets[1] + crop_w

    def context(self, images: torch.Tensor) -> torch.Tensor:
        """The context view: `images` resized by `context_scale` (bilinear)."""
        if self.context_scale == 1.0:
            return images
        return F.interpolate(images, scale_factor=self.context_scale, mode="bilinear",
                             align_corners=False)

    def _output_stride(self, window: tuple[int, int], logits: torch.Tensor) -> int:
        (height, width), (h, w) = window, tuple(logits.shape[-2:])
        if height % h or width % w or height // h != width // w:
            raise ValueError(f"a {height}x{width} detail window gave {h}x{w} logits: "
                             f"{_KEY}.detail_crop (and smaller inputs) must be multiples of the "
                             "head's output stride")
        return height // h

    def _to_grid(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Upsample context-grid maps by 1 / context_scale (the official resize) when that
        lands on the detail grid; otherwise (input sides not multiples of os / context_scale)
        resize to the grid."""
        factor = 1.0 / self.context_scale
        if tuple(x.shape[-2:]) == tuple(grid):
            return x
        if all(int(side * factor) == g for side, g in zip(x.shape[-2:], grid, strict=True)):
            return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=tuple(grid), mode="bilinear", align_corners=False)

    def _fuse(self, context_logits: torch.Tensor, attention: torch.Tensor,
              detail_on_grid: torch.Tensor) -> torch.Tensor:
        """`up(a) * detail + up((1 - a) * context)` on the detail grid."""
        grid = tuple(detail_on_grid.shape[-2:])
        return (self._to_grid(attention, grid) * detail_on_grid
                + self._to_grid((1 - attention) * context_logits, grid))

    def forward_train(self, images: torch.Tensor, box: Box) -> MultiResolutionOutput:
        """(N, 3, H, W) images and one detail `box` (from `draw_detail_box`) -> the fused and
        detail logits and the context features (see `MultiResolutionOutput`)."""
        height, width = images.shape[-2:]
        y1, y2, x1, x2 = (int(v) for v in box)
        if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
            raise ValueError(f"detail box {tuple(box)} is not inside the {height}x{width} image")
        # The official order of calls (it matters for BN running statistics and dropout).
        context_features = self.encode(self.context(images))
        detail_features = self.encode(images[..., y1:y2, x1:x2])
        context_logits = self.head(context_features)
        detail = self.head(detail_features)
        attention = torch.sigmoid(self.attention(context_features))
        stride = self._output_stride((y2 - y1, x2 - x1), detail)
        mask = torch.zeros_like(attention[:, :1])
        cy1, cy2, cx1, cx2 = _scale_box((y1, y2, x1, x2), stride / self.context_scale)
        mask[..., cy1:cy2, cx1:cx2] = 1
        attention = attention * mask
        grid_h, grid_w = height // stride, width // stride
        gy1, gy2, gx1, gx2 = _scale_box((y1, y2, x1, x2), stride)
        inserted = F.pad(detail, (gx1, grid_w - gx2, gy1, grid_h - gy2))
        fused = self._fuse(context_logits, attention, inserted)
        return MultiResolutionOutput(fused, detail, context_features, (y1, y2, x1, x2),
                                     attention)

    def detail_windows(self, height: int, width: int) -> list[Box]:
        """The inference windows (y1, y2, x1, x2) over a `height` x `width` input, row by row."""
        rows = _window_spans(height, self.detail_crop[0], self.detail_stride[0])
        cols = _window_spans(width, self.detail_crop[1], self.detail_stride[1])
        return [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]

    def detail_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H/os, W/os) detail logits of the whole input: the mean of the overlapping
        windows' logits (`detail_windows`) where they overlap."""
        count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        boxes = self.detail_windows(height, width)
        if self.batch_detail_windows:
            crops = torch.cat([images[..., y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
            window_logits = self.head(self.encode(crops)).split(count)
        else:
            window_logits = (self.head(self.encode(images[..., y1:y2, x1:x2]))
                             for y1, y2, x1, x2 in boxes)
        total: Optional[torch.Tensor] = None
        for box, logits in zip(boxes, window_logits, strict=True):
            if total is None:
                stride = self._output_stride((box[1] - box[0], box[3] - box[2]), logits)
                total = logits.new_zeros((count, logits.shape[1], height // stride,
                                          width // stride))
                hits = logits.new_zeros((1, 1, height // stride, width // stride))
            y1, y2, x1, x2 = _scale_box(box, stride)
            total[..., y1:y2, x1:x2] += logits
            hits[..., y1:y2, x1:x2] += 1
        return total / hits

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """Inference: context on the whole input, detail by overlapping windows, fused, and
        resized to the input size (bilinear, align_corners=False)."""
        context_features = self.encode(self.context(images))
        context_logits = self.head(context_features)
        detail = self.detail_logits(images)
        attention = torch.sigmoid(self.attention(context_features))
        fused = self._fuse(context_logits, attention, detail)
        size = tuple(images.shape[-2:])
        if tuple(fused.shape[-2:]) != size:
            fused = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        return {MAIN: fused}
