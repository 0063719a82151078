"""Conservative Loss: Zhu, Zhou, Yang, Shi, Lin, "Penalizing Top Performers: Conservative Loss
for Semantic Segmentation Adaptation", ECCV 2018. No public implementation exists."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from udaseg.losses.common import upsample_logits

_PROBABILITY_FLOOR = 1e-6


def _ground_truth_log_probability(logits: torch.Tensor, labels: torch.Tensor,
                                  ignore_index: int) -> torch.Tensor:
    """log p_g of every labelled pixel (1-D), from logits upsampled to the label size."""
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    valid = labels != ignore_index
    log_prob = F.log_softmax(logits.float(), dim=1)
    safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    log_p_g = log_prob.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    return log_p_g[valid]


def conservative_weight(p_g: torch.Tensor, base: float = math.e,
                        weight: float = 1.0) -> torch.Tensor:
    """The published Conservative Loss expression as a function of p_g (values, (any shape)).

    `CL(p_g) = weight * (1 + log_a p_g)^2 * log_a(-log_a p_g)`, a = `base` > 1.

    Positive for p_g < 1/a, zero at p_g = 1/a, negative above and unbounded below as p_g -> 1.
    p_g is clamped to [1e-6, 1 - 1e-6] so the double logarithm stays finite.
    """
    if base <= 1:
        raise ValueError(f"the Conservative Loss base a must be > 1, got {base}")
    p_g = p_g.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    log_a_p = torch.log(p_g) / math.log(base)
    return weight * (1 + log_a_p).pow(2) * torch.log(-log_a_p) / math.log(base)


def conservative_loss_published(logits: torch.Tensor, labels: torch.Tensor,
                                base: float = math.e, weight: float = 1.0,
                                ignore_index: int = 255) -> torch.Tensor:
    """The Conservative Loss exactly as published (Zhu et al., ECCV 2018, Eq. 2), per-pixel mean.

    `L = 1/|V| * sum_{i in V} CL(p_{i, y_i})`, CL as in `conservative_weight`, V = labelled
    pixels; logits (N, C, h, w) are upsampled to the (N, H, W) labels first; returns a scalar.

    Kept for transparency, not as the default: minimising it literally *raises* p_g at every
    p_g (dCL/dp_g <= 0 everywhere, 0 only at p_g = 1/a), so it never performs the gradient
    ascent on well-classified pixels the paper describes; and as p_g -> 1 it goes to -inf with
    a logit gradient that tends to -1/ln(a) instead of vanishing, so it keeps pushing confident
    logits apart. See `conservative_loss` for a form with the claimed behaviour.
    """
    log_p_g = _ground_truth_log_probability(logits, labels, ignore_index)
    if log_p_g.numel() == 0:
        return logits.sum() * 0.0
    return conservative_weight(log_p_g.exp(), base, weight).mean()


def conservative_loss(logits: torch.Tensor, labels: torch.Tensor, base: float = math.e,
                      weight: float = 1.0, ignore_index: int = 255) -> torch.Tensor:
    """Conservative Loss with the behaviour the paper claims (signed, pixel-adaptive CE).

    `L = 1/|V| * sum_{i in V} sg[CL(p_{i, y_i})] * (-log p_{i, y_i})`, sg = stop-gradient,
    CL = `conservative_weight` (Zhu et al., ECCV 2018, Eq. 2) used as a per-pixel signed weight.

    Gradient descent on L therefore: raises p_g for badly classified pixels (p_g < 1/a, weight
    > 0, growing as p_g -> 0), is neutral at p_g = 1/a, and *lowers* p_g (gradient ascent on the
    cross-entropy) for very well classified ones (p_g > 1/a), penalising both extremes as the
    paper describes: a pixel-adaptive gradient reversal. Bounded: the logit gradient
    `-CL(p_g) * (1 - p_g)` tends to 0 as p_g -> 1. Logits (N, C, h, w) are upsampled to the
    (N, H, W) labels; returns a scalar (0 with a graph when no pixel is labelled).
    """
    log_p_g = _ground_truth_log_probability(logits, labels, ignore_index)
    if log_p_g.numel() == 0:
        return logits.sum() * 0.0
    signed_weight = conservative_weight(log_p_g.detach().exp(), base, weight)
    return (signed_weight * -log_p_g).mean()
