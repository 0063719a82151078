"""Losses shared by every method: logit upsampling, the source cross-entropy and its per-pixel
form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Optional

import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size: tuple[int, int],
                    align_corners: bool = True) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to `size` = (H, W).

    The official DeepLabV2 UDA code (AdaptSegNet, ADVENT, CLAN) upsamples with
    align_corners=True before every loss and at evaluation; we keep it so numbers match. mmseg's
    networks (DAFormer) use False (`Segmenter.align_corners`).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = 255,
                               reduction: Literal["labelled", "all_pixels"] = "labelled"
                               ) -> torch.Tensor:
    """Pixel-wise cross-entropy, averaged over the labelled pixels or over all pixels.

    V = pixels whose label is not `ignore_index`, P = all N*H*W pixels:
    - "labelled": `CE = -1/|V| * sum_{i in V} log p_{i, y_i}` (PyTorch's `ignore_index` mean,
      the DeepLabV2 UDA papers);
    - "all_pixels": `CE = -1/|P| * sum_{i in V} log p_{i, y_i}`: ignored pixels count in the
      denominator with loss 0, so a batch with half its pixels labelled gets half the labelled
      mean (mmseg 0.16's `CrossEntropyLoss`, which DAFormer trains with).
    Logits (N, C, h, w) are first upsampled to the label size (H, W), as in the official code;
    labels (N, H, W). Returns 0 (with a graph) when no pixel is labelled, instead of NaN.
    """
    if reduction not in ("labelled", "all_pixels"):
        raise ValueError(f"reduction must be 'labelled' or 'all_pixels', got {reduction!r}")
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    if reduction == "all_pixels":
        return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index,
                               reduction="none").mean()
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        class_weights: Optional[torch.Tensor] = None,
                        ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) per-pixel `-w_{y_i} log p_{i, y_i}` (0 on ignored pixels), logits (N, C, h, w)
    upsampled to the labels first; `w` optional class weights. The losses that normalise by
    every pixel (TUFL's, DACS's and CIM's) reduce it themselves."""
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    weight = None if class_weights is None else class_weights.to(logits)
    return F.cross_entropy(logits, labels.long(), weight=weight, ignore_index=ignore_index,
                           reduction="none")


def level_probabilities(outputs: Mapping[str, torch.Tensor],
                        size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Softmax of the "main" and (if present) "aux" logits, upsampled to `size` first
    (official order: upsample, then softmax)."""
    return {level: F.softmax(upsample_logits(outputs[level], size), dim=1)
            for level in ("main", "aux") if level in outputs}
