"""MaxSquare: Chen, Xue, Cai, "Domain Adaptation for Semantic Segmentation with Maximum Squares
Loss", ICCV 2019."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def maxsquare_loss(prob: torch.Tensor) -> torch.Tensor:
    """Maximum squares loss (Chen et al., ICCV 2019, Eq. 5).

    `L_ms = -1/(2*N*C*H*W) * sum_{n, c, h, w} p[n, c, h, w]^2`

    `prob`: target softmax (N, C, H, W), not detached (the loss trains through it). Returns a
    scalar. Unlike entropy, whose gradient is dominated by already confident pixels, the
    gradient `-p / (N*C*H*W)` grows only linearly with p. Official normalisation: the mean over
    every element (the official class's ignore mask compares probabilities with -1, so it never
    masks anything).
    """
    return -prob.pow(2).mean() / 2


def iw_maxsquare_loss(prob: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """Maximum squares loss with image-wise class weighting (Chen et al., ICCV 2019, Eq. 8).

    For each image n, with `n_c` = number of pixels whose argmax is class c and `P = sum_c n_c`:
        `w[n, c] = 1 / max(n_c^ratio * P^(1 - ratio), 1)`   (no gradient)
        `L_iw = -1/(N*C) * sum_{n, c, h, w} p[n, c, h, w]^2 * w[n, argmax_c p[n, :, h, w]]`

    Each pixel's squares are weighted by its predicted class's weight, so classes that occupy
    few pixels in an image are not drowned by the large ones. `prob`: (N, C, H, W) softmax,
    returns a scalar. For N = 1 this is the official `IW_MaxSquareloss` value. The official
    class fails for N > 1 (its (N, H, W) weights broadcast against (N, C, H, W)); here each image
    uses its own histogram and the sum is divided by N*C, i.e. the mean over images of the
    single-image value (batch generalisation; documented in docs/methods/maxsquare.md).
    """
    n, c, h, w = prob.shape
    predicted = prob.detach().argmax(dim=1)                                   # (N, H, W)
    counts = F.one_hot(predicted, c).flatten(1, 2).sum(dim=1).to(prob.dtype)  # (N, C)
    total = counts.sum(dim=1, keepdim=True)                                   # (N, 1) = H*W
    class_weights = 1.0 / torch.clamp(counts.pow(ratio) * total.pow(1.0 - ratio), min=1.0)
    pixel_weights = torch.gather(class_weights, 1, predicted.flatten(1)).view(n, 1, h, w)
    return -(prob.pow(2) * pixel_weights).sum() / (n * c)


def self_produced_guidance(main_prob: torch.Tensor, aux_prob: torch.Tensor,
                           threshold: float = 0.95, ignore_index: int = 255) -> torch.Tensor:
    """Pseudo-labels of MaxSquare's multi-level self-produced guidance (Chen et al., Sec. 3.4).

    `y = argmax_c (p_main + p_aux) / 2` where `max_c p_main > threshold` or
    `max_c p_aux > threshold`, `ignore_index` elsewhere. Inputs (N, C, H, W) softmax maps of the
    two levels at the same size; returns (N, H, W) int64 labels without gradient. The auxiliary
    classifier is then trained with cross-entropy on these labels.
    """
    with torch.no_grad():
        combined = (main_prob + aux_prob) / 2
        confident = (main_prob.max(dim=1).values > threshold) | \
                    (aux_prob.max(dim=1).values > threshold)
        labels = combined.argmax(dim=1)
        return torch.where(confident, labels, torch.full_like(labels, ignore_index))
