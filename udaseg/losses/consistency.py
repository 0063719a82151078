"""TUFL: Yan et al., "Threshold-Adaptive Unsupervised Focal Loss for Domain Adaptation of
Semantic Segmentation", IEEE T-ITS 2023 (code: ywher/TUFL, `utils/loss.py`), with the
instance-adaptive threshold rule of IAST (Mei et al., ECCV 2020) and ENet's class weights.

Notation: `p` softmax of the clean target view's logits (warped into the strong view's frame),
`p̄ = stopgrad(p)`, `q` softmax of the strong view's logits, `ŷ = argmax_c p̄_c`.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from udaseg.losses.common import pixel_cross_entropy

#: Inside every log, as officially (`LOG_EPSILON`): keeps log(0) finite.
LOG_EPSILON = 1e-30
#: Per-pixel losses are clamped from below to this (official `MIN_EPSILON`).
MIN_PIXEL_LOSS = 1e-8

FocalModulation = Literal["confidence", "difference"]


def unsupervised_focal_loss(clean_logits: torch.Tensor, strong_logits: torch.Tensor,
                            selected: torch.Tensor, class_weights: Optional[torch.Tensor] = None,
                            gamma: float = 2.0,
                            modulation: FocalModulation = "confidence") -> torch.Tensor:
    """Unsupervised focal loss (UFL) between a clean and a strong view (Yan et al., T-ITS 2023).

    Per pixel, with class weights `w_c` (1 when None) and modulating factor `m`:

        `l = sum_c w_c [ p̄_c log p̄_c - m^gamma p̄_c log q_c - p_c log p_c ]`
        `m = 1 - q_ŷ`         ("confidence", official focal_type 1, the adaptive-threshold run)
        `m = |p̄_ŷ - q_ŷ|`     ("difference", official focal_type 2, the fixed-threshold run)

    and `L_UFL = mean over selected pixels of max(l, 1e-8)`. The first and third terms cancel in
    value but not in gradient: the third is an entropy term that trains the clean view (through
    p), the first is constant; `m` is not detached, so the strong view also gets gradient
    through it. A pixel whose strong prediction already agrees with a confident clean one has a
    small `m`: the hard pixels dominate. Official quirk kept: each class term is weighted and
    the weighted terms are summed, the mean is plain (not divided by the weights).

    Args:
        clean_logits: (N, C, H, W) logits of the clean view, already in the strong view's frame.
        strong_logits: (N, C, H, W) logits of the strong view.
        selected: (N, H, W) bool, the pixels that count (confidence selection, in frame).
        class_weights: (C,) weights `w_c`, or None.
        gamma: focusing exponent (official runs: 2).
        modulation: which factor `m`, see above.

    Returns a scalar; 0 (with a graph, no NaN) when no pixel is selected.

    Example:
        >>> clean = torch.tensor([[[[4.0]], [[0.0]]]]); strong = torch.zeros(1, 2, 1, 1)
        >>> round(float(unsupervised_focal_loss(clean, strong, torch.ones(1, 1, 1, dtype=bool))), 4)
        0.1733
    """
    if clean_logits.shape != strong_logits.shape:
        raise ValueError(f"clean logits {tuple(clean_logits.shape)} and strong logits "
                         f"{tuple(strong_logits.shape)} must have the same shape")
    clean = F.softmax(clean_logits.float(), dim=1)
    strong = F.softmax(strong_logits.float(), dim=1)
    clean_fixed = clean.detach()
    pseudo_label = clean_fixed.argmax(dim=1, keepdim=True)
    strong_at_label = strong.gather(1, pseudo_label)
    if modulation == "confidence":
        factor = 1.0 - strong_at_label
    elif modulation == "difference":
        factor = (clean_fixed.gather(1, pseudo_label) - strong_at_label).abs()
    else:
        raise ValueError(f"modulation must be 'confidence' or 'difference', got {modulation!r}")
    log_clean_fixed = torch.log(clean_fixed + LOG_EPSILON)
    per_class = (clean_fixed * (log_clean_fixed - factor.pow(gamma)
                                * torch.log(strong + LOG_EPSILON))
                 - clean * torch.log(clean + LOG_EPSILON))
    if class_weights is not None:
        per_class = per_class * class_weights.to(per_class).view(1, -1, 1, 1)
    per_pixel = per_class.sum(dim=1)[selected]
    if per_pixel.numel() == 0:
        return (clean_logits.sum() + strong_logits.sum()) * 0.0
    return per_pixel.clamp(min=MIN_PIXEL_LOSS).mean()


def confidence_selection(clean_prob: torch.Tensor, thresholds: torch.Tensor,
                         in_frame: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixels whose clean confidence beats their predicted class's threshold (TUFL).

    `selected = max_c p̄_c > theta_ŷ` (strict, as officially) and, when given, `in_frame`.
    `clean_prob` (N, C, H, W); `thresholds` (C,) per class, or a 0-d tensor for a fixed
    threshold; `in_frame` (N, H, W) bool. Returns (N, H, W) bool.
    """
    confidence, predicted = clean_prob.detach().max(dim=1)
    threshold = thresholds.to(clean_prob.device)
    per_pixel = threshold if threshold.dim() == 0 else threshold[predicted]
    selected = confidence.double() > per_pixel.double()
    return selected & in_frame if in_frame is not None else selected


def adaptive_thresholds(confidence: torch.Tensor, predicted: torch.Tensor,
                        thresholds: torch.Tensor, b: float = 0.8, d: float = 8.0,
                        a: float = 0.9, ceiling: float = 0.999) -> torch.Tensor:
    """One step of the class-adaptive threshold rule (IAST, Mei et al., ECCV 2020; TUFL).

    For each class c, with `theta_c` the current threshold and `s_c` the confidences of the
    N_c pixels predicted c: append `theta_c` to `s_c`, sort descending, take
    `psi_c = s_c[floor((N_c + 1) * b * theta_c^d)]` (`psi_c = theta_c` when N_c = 0), then
    `theta_c <- a * theta_c + (1 - a) * psi_c`, and any value >= 1 becomes `ceiling`.
    A confident class (high theta) ranks deeper into its pixels (higher `b * theta^d`), i.e.
    lowers its threshold less; `a` keeps the history. TUFL's constants: b 0.8, d 8, a 0.9,
    theta_0 0.8.

    Official precision: `theta_c` is appended to the scores in their dtype (float32 for
    float32 probabilities), so a `psi_c` that is `theta_c` itself comes back rounded to float32.

    Args:
        confidence: max clean probability of each counted pixel, any shape.
        predicted: the predicted class of each pixel, same shape.
        thresholds: (C,) current thresholds (TUFL keeps them in float64).

    Returns the new (C,) thresholds, same dtype; the input is not modified.
    """
    confidence = confidence.detach().reshape(-1)
    predicted = predicted.reshape(-1)
    ranked = thresholds.clone()
    for class_index in range(thresholds.numel()):
        theta = thresholds[class_index]
        scores = confidence[predicted == class_index]
        if scores.numel() == 0:
            continue
        # theta joins the scores at their precision, as officially (float32 probabilities).
        scores = torch.cat([scores, theta.to(scores.dtype).view(1)])
        scores = torch.sort(scores, descending=True).values
        ranked[class_index] = scores[int(scores.numel() * b * float(theta) ** d)]
    updated = a * thresholds + (1 - a) * ranked
    return torch.where(updated >= 1, torch.full_like(updated, ceiling), updated)


def class_balance_weights(pixel_counts: torch.Tensor, offset: float = 1.10) -> torch.Tensor:
    """Class weights from label frequencies, ENet's rule (Paszke et al., 2016):
    `w_c = 1 / ln(offset + f_c)`, `f_c` = class c's share of the labelled pixels.

    TUFL's official weights are hard-coded for Cityscapes (2.6 for road up to 10.3, origin not
    documented); they lie in the range this rule gives with `offset` 1.10 (at most
    1 / ln 1.10 = 10.49 for an absent class, about 2.6 at f = 0.36, road's share), so that is
    the default. `pixel_counts` (C,), returns (C,) float32.
    """
    counts = pixel_counts.double()
    if counts.sum() <= 0:
        raise ValueError("class_balance_weights: the label counts are all zero")
    if offset <= 1.0:
        raise ValueError(f"class_balance_weights: offset must be > 1 (got {offset}): "
                         "ln(offset) would not be positive for an absent class")
    return (1.0 / torch.log(offset + counts / counts.sum())).float()


def class_weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                 class_weights: torch.Tensor,
                                 ignore_index: int = 255) -> torch.Tensor:
    """TUFL's supervised loss: `1/(N*H*W) * sum_{i in V} -w_{y_i} log p_{i, y_i}`.

    Official normalisation (`RegularCrossLoss`: weighted cross-entropy without reduction, then
    the plain mean): divided by every pixel, ignored ones included, and not by the weights.
    Logits (N, C, h, w) are upsampled to the (N, H, W) labels first. Returns a scalar.
    """
    return pixel_cross_entropy(logits, labels, class_weights, ignore_index).mean()

