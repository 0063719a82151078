"""Cross-domain mixing: DACS (Tranheden et al., "DACS: Domain Adaptation via Cross-domain Mixed
Sampling", WACV 2021; code vikolss/DACS) and TUFL's stage 2, CIM (Yan et al., IEEE T-ITS 2023).

A mixed image carries source pixels (their labels, weight 1) and target pixels (the teacher's
pseudo-labels, weighted by how confident the teacher is on the target image as a whole).
"""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.losses.common import pixel_cross_entropy, upsample_logits


def confidence_fraction(teacher_prob: torch.Tensor, threshold: float = 0.968) -> torch.Tensor:
    """DACS's pseudo-label weight: the share of pixels whose top teacher probability is at
    least `threshold` (0.968 in DACS and CIM), over the whole (N, C, H, W) batch: one scalar,
    as officially (`torch.sum(max_probs.ge(0.968)) / max_probs.numel()`)."""
    return (teacher_prob.max(dim=1).values >= threshold).float().mean()


def mixed_pixel_weights(source_mask: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
    """(N, H, W) weights of a mixed batch: 1 on pasted source pixels (`source_mask`), the scalar
    `target_weight` on target pixels."""
    return torch.where(source_mask, torch.ones_like(source_mask, dtype=torch.float32),
                       target_weight.float().expand(source_mask.shape))


def pixel_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                 pixel_weights: torch.Tensor,
                                 class_weights: Optional[torch.Tensor] = None,
                                 ignore_index: int = 255) -> torch.Tensor:
    """Mixed-image loss: `1/(N*H*W) * sum_{i not ignored} m_i * w_{y_i} * -log p_{i, y_i}`.

    `m_i` the (N, H, W) pixel weights (`mixed_pixel_weights`), `w_c` optional class weights
    (CIM: TUFL's; DACS: none). Divided by every pixel, ignored ones included, as DACS's
    `CrossEntropyLoss2dPixelWiseWeighted` and CIM's weighted loss do. Logits (N, C, h, w) are
    upsampled to the labels' size first. Returns a scalar.

    >>> logits = torch.zeros(1, 2, 1, 2)      # p = 0.5 everywhere: -log p = log 2
    >>> labels = torch.tensor([[[0, 255]]])
    >>> loss = pixel_weighted_cross_entropy(logits, labels, torch.tensor([[[0.5, 1.0]]]))
    >>> round(loss.item(), 4) == round(0.5 * 0.6931 / 2, 4)
    True
    """
    logits = upsample_logits(logits, tuple(labels.shape[-2:])).float()
    per_pixel = pixel_cross_entropy(logits, labels, class_weights, ignore_index)
    return (per_pixel * pixel_weights.to(per_pixel)).mean()
