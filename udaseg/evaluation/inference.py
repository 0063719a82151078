"""Test-time options of evaluation and prediction, as in mmsegmentation: horizontal-flip and
multi-scale augmentation, and sliding-window inference.

With the defaults (no flip, scale 1, the whole image at once) the result is the network's
logits unchanged. Sliding windows average the logits of overlapping windows (mmsegmentation's
`slide_inference`); several augmented views average their softmax probabilities
(mmsegmentation's test-time augmentation), returned as log-probabilities, which are valid
logits: their argmax is the prediction and their softmax the averaged probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from udaseg.losses import upsample_logits

#: `logits_at(images, size)`: (N, C, size) logits of (N, 3, h, w) images.
LogitsFunction = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class Inference:
    """How images become logits in validation, test and predict.

    Args:
        flip: also predict the horizontally flipped image (flipped back) and average.
        scales: resize factors of the input image (bilinear); each is predicted and the results
            averaged (e.g. [0.75, 1.0, 1.25]). Logits are upsampled to the label size in every
            case, as in plain evaluation.
        window: (height, width) of sliding windows over the (scaled) input; None predicts the
            whole image at once. Windows larger than the image are clipped to it.
        stride: (height, width) step between windows; defaults to two thirds of the window.
        batch_windows: predict all windows of a batch in one network call (as mmseg's and
            HRDA's batched slide inference: faster on a GPU, more memory); False (default)
            predicts one window at a time. The logits are the same either way for networks
            in evaluation mode.
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    window: Optional[tuple[int, int]] = None
    stride: Optional[tuple[int, int]] = None
    batch_windows: bool = False

    def __post_init__(self) -> None:
        if not self.scales or any(scale <= 0 for scale in self.scales):
            raise ValueError(f"inference.scales must be positive factors, got {self.scales}")
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ValueError(f"inference.{name} must be (height, width) >= 1, got {value}")
        if self.stride is not None and self.window is None:
            raise ValueError("inference.stride needs inference.window")


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering [0, length): every `stride`, the last one flush with
    the end (mmsegmentation's grid)."""
    if window >= length:
        return [0]
    count = -(-(length - window) // stride) + 1
    return [min(index * stride, length - window) for index in range(count)]


def sliding_window_logits(logits_at: LogitsFunction, images: torch.Tensor,
                          window: tuple[int, int], stride: tuple[int, int],
                          batched: bool = False) -> torch.Tensor:
    """(N, C, H, W) mean logits of the windows of (N, 3, H, W) `images` (each window's logits
    at the window's size); `batched`: all windows in one `logits_at` call."""
    height, width = images.shape[-2:]
    window_h, window_w = min(window[0], height), min(window[1], width)
    corners = [(top, left) for top in window_starts(height, window_h, stride[0])
               for left in window_starts(width, window_w, stride[1])]
    crops = [images[..., top:top + window_h, left:left + window_w] for top, left in corners]
    if batched:
        window_logits = logits_at(torch.cat(crops), (window_h, window_w)).float().split(
            images.shape[0])
    else:
        window_logits = (logits_at(crop, (window_h, window_w)).float() for crop in crops)
    total: Optional[torch.Tensor] = None
    count = torch.zeros((1, 1, height, width), device=images.device)
    for (top, left), logits in zip(corners, window_logits, strict=True):
        if total is None:
            total = logits.new_zeros(logits.shape[:2] + (height, width))
        total[..., top:top + window_h, left:left + window_w] += logits
        count[..., top:top + window_h, left:left + window_w] += 1
    return total / count


def infer_logits(logits_at: LogitsFunction, images: torch.Tensor, size: tuple[int, int],
                 options: Inference, align_corners: bool = True) -> torch.Tensor:
    """(N, C, *size) logits of `images` under `options` (see the module docstring);
    `align_corners`: how the sliding windows' stitched logits are resized to `size`, as the
    network's own resize (`Segmenter.align_corners`: mmseg's networks use False)."""
    views = []
    for scale in options.scales:
        scaled = images
        if scale != 1.0:
            scaled_size = (max(1, round(images.shape[-2] * scale)),
                           max(1, round(images.shape[-1] * scale)))
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear",
                                   align_corners=False)
        for flipped in ((False, True) if options.flip else (False,)):
            view = scaled.flip(-1) if flipped else scaled
            if options.window is None:
                logits = logits_at(view, size)
            else:
                stride = options.stride or tuple(max(1, side * 2 // 3)
                                                 for side in options.window)
                logits = upsample_logits(
                    sliding_window_logits(logits_at, view, options.window, stride,
                                          options.batch_windows), size,
                    align_corners)
            views.append(logits.flip(-1) if flipped else logits)
    if len(views) == 1:
        return views[0]
    probability = torch.stack([F.softmax(view.float(), dim=1) for view in views]).mean(0)
    return torch.log(probability.clamp_min(1e-30))


# Methods built in Python pickle this config in their checkpoints' `hyper_parameters`.
torch.serialization.add_safe_globals([Inference])
