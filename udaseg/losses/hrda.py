"""HRDA's multi-resolution loss (Hoyer, Dai and Van Gool, "HRDA: Context-Aware High-Resolution
Domain-Adaptive Semantic Segmentation", ECCV 2022; code lhoyer/HRDA): the fused prediction is
trained on the whole label map, the detail crop's own prediction on the crop of it."""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F

from udaseg.losses.common import segmentation_cross_entropy


class MultiResolutionLoss(NamedTuple):
    """`total` = (1 - detail_weight) * `fused` + detail_weight * `detail`; `fused` and
    `detail` are the two cross-entropies before weighting (for logging)."""

    total: torch.Tensor
    fused: torch.Tensor
    detail: torch.Tensor


def _resized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           pixel_weights: Optional[torch.Tensor], ignore_index: int,
                           reduction: Literal["labelled", "all_pixels"]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        # mmseg's decode-head loss resize: bilinear, align_corners=False.
        logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear",
                               align_corners=False)
    if pixel_weights is None:
        return segmentation_cross_entropy(logits, labels, ignore_index, reduction)
    per_pixel = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index,
                                reduction="none")
    return (per_pixel * pixel_weights.to(per_pixel)).mean()


def multi_resolution_loss(fused: torch.Tensor, detail: torch.Tensor,
                          box: tuple[int, int, int, int], labels: torch.Tensor,
                          pixel_weights: Optional[torch.Tensor] = None,
                          detail_weight: float = 0.1, ignore_index: int = 255,
                          reduction: Literal["labelled", "all_pixels"] = "all_pixels"
                          ) -> MultiResolutionLoss:
    """`L = (1 - lambda_d) * CE(up(fused), y) + lambda_d * CE(up(detail), crop(y, box))`.

    HRDA's loss with the detail weight `lambda_d` = `detail_weight` (0.1 officially); there is
    no context term. Shapes: `fused` (N, C, H/os, W/os) logits on the full-resolution grid,
    `detail` (N, C, h/os, w/os) logits of the detail crop, `box` = (y1, y2, x1, x2) the crop in
    label pixels (h = y2 - y1, w = x2 - x1), `labels` (N, H, W) with `ignore_index`,
    `pixel_weights` optional (N, H, W). `up` is bilinear with align_corners=False to the label
    size (the crop's for the detail term), as mmseg's decode-head loss.

    CE per pixel is 0 on ignored pixels. With `pixel_weights` (cropped to the box for the detail
    term) each term is `mean over all pixels of w_i * CE_i` (mmseg's loss with `seg_weight`),
    whatever `reduction`; without them, `reduction` "all_pixels" averages over all pixels
    (mmseg) and "labelled" over the labelled ones (see `segmentation_cross_entropy`).

    Returns a `MultiResolutionLoss` (total, fused, detail): the total and the two unweighted
    terms.
    """
    if not 0 <= detail_weight <= 1:
        raise ValueError(f"detail_weight must be in [0, 1], got {detail_weight}")
    if labels.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(labels.shape)}")
    if pixel_weights is not None and pixel_weights.shape != labels.shape:
        raise ValueError(f"pixel_weights {tuple(pixel_weights.shape)} must have the labels' "
                         f"shape {tuple(labels.shape)}")
    height, width = labels.shape[-2:]
    y1, y2, x1, x2 = (int(v) for v in box)
    if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
        raise ValueError(f"detail box {tuple(box)} is not inside the {height}x{width} labels")
    fused_loss = _resized_cross_entropy(fused, labels, pixel_weights, ignore_index, reduction)
    crop_weights = None if pixel_weights is None else pixel_weights[:, y1:y2, x1:x2]
    detail_loss = _resized_cross_entropy(detail, labels[:, y1:y2, x1:x2], crop_weights,
                                         ignore_index, reduction)
    total = (1 - detail_weight) * fused_loss + detail_weight * detail_loss
    return MultiResolutionLoss(total, fused_loss, detail_loss)
