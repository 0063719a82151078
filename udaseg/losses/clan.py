"""CLAN: Luo, Zheng, Guan, Yu, Yang, "Taking a Closer Look at Domain Shift: Category-level
Adversaries for Semantics Consistent Domain Adaptation", CVPR 2019 (code: RoyalVane/CLAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from udaseg.losses.common import upsample_logits


def weight_discrepancy_loss(first_params: list[torch.Tensor],
                            second_params: list[torch.Tensor]) -> torch.Tensor:
    """Weight discrepancy loss of CLAN's two classifiers (Luo et al., CVPR 2019, Eq. 2).

    `L_weight = cos(w1, w2) + 1 = w1 . w2 / (||w1|| * ||w2||) + 1`

    where `w1` (`w2`) is every tensor of the first (second) classifier flattened and
    concatenated, in the given order (the two sequences pair up tensor by tensor, e.g.
    `layer5.parameters()` and `layer6.parameters()`). The +1 keeps it in [0, 2]: 2 for
    identical classifiers, 0 for opposite ones. Minimising it pushes the classifiers towards
    different weights, i.e. two distinct views of the same features. Returns a scalar.
    """
    if len(first_params) != len(second_params) or not first_params:
        raise ValueError("weight_discrepancy_loss needs two equally long, non-empty parameter "
                         f"lists, got {len(first_params)} and {len(second_params)}")
    first = torch.cat([p.reshape(-1) for p in first_params])
    second = torch.cat([p.reshape(-1) for p in second_params])
    return torch.dot(first, second) / (first.norm() * second.norm()) + 1


def local_alignment_map(first_prob: torch.Tensor, second_prob: torch.Tensor) -> torch.Tensor:
    """CLAN's local alignment score map (Luo et al., CVPR 2019, Eq. 3; official `weightmap`).

    `M[n, 0, h, w] = 1 - cos(p1[n, :, h, w], p2[n, :, h, w])`

    the cosine taken over the class axis of the two classifiers' softmax maps (N, C, H, W); the
    result is (N, 1, H, W), in [0, 1] for probabilities: 0 where the classifiers agree (a
    category already aligned), up to 1 for orthogonal predictions (a poorly aligned one). The
    official code computes it on the softmax of logits upsampled to the input size, and only
    for batch size 1; here any N.
    """
    if first_prob.shape != second_prob.shape or first_prob.dim() != 4:
        raise ValueError("local_alignment_map expects two (N, C, H, W) maps of one shape, got "
                         f"{tuple(first_prob.shape)} and {tuple(second_prob.shape)}")
    # Softmax vectors have norm >= 1/sqrt(C), so the small eps never changes a value.
    return 1 - F.cosine_similarity(first_prob, second_prob, dim=1, eps=1e-12).unsqueeze(1)


def weighted_bce_with_constant(logits: torch.Tensor, label: float, weight_map: torch.Tensor,
                               epsilon: float = 0.4, lambda_local: float = 40.0) -> torch.Tensor:
    """CLAN's adaptively weighted adversarial BCE (Luo et al., CVPR 2019, Eq. 4).

    `L = 1/|X| * sum_x (epsilon + lambda_local * M_x) * bce(z_x, y)`,
    `bce(z, y) = -[y * log(sigmoid(z)) + (1 - y) * log(1 - sigmoid(z))]`, y = `label` everywhere

    i.e. `mean(epsilon * bce + lambda_local * bce * M)`. `logits` is the discriminator output
    and `weight_map` the local alignment map M, both (N, 1, H, W) of the same size, so the
    weighting is per pixel: the official code upsamples the discriminator output (bilinear,
    align_corners=True) to the input size, where M lives, before this loss. Pixels whose two
    classifiers disagree (large M) get a larger adversarial weight; `epsilon` keeps a floor
    for the aligned ones. Official values: epsilon 0.4, lambda_local 40 (GTA5) or 10 (SYNTHIA).
    With M = 0 this is `epsilon * bce_with_constant(logits, label)`. Returns a scalar.
    """
    if logits.shape != weight_map.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and weight_map "
                         f"{tuple(weight_map.shape)} must have the same shape (upsample first)")
    target = torch.full_like(logits, float(label))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (epsilon * bce + lambda_local * bce * weight_map).mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise focal loss, the segmentation loss of the official CLAN code (`CrossEntropy2d`).

    `FL = -1/|V| * sum_{i in V} (1 - p_{i, y_i})^gamma * log p_{i, y_i}`, V = labelled pixels

    (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, without the alpha term;
    gamma = 2 officially; gamma = 0 is the cross-entropy). Logits (N, C, h, w) are upsampled to
    the (N, H, W) labels first. `log p` comes from `log_softmax` in float32; the official code
    clamps p to >= 1e-9 instead, which differs only for p_y < 1e-9. Returns a scalar (0 with a
    graph when no pixel is labelled).
    """
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    valid = labels != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    log_prob = F.log_softmax(logits.float(), dim=1)
    safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    log_p_y = log_prob.gather(1, safe_labels.unsqueeze(1)).squeeze(1)[valid]
    return (-(1 - log_p_y.exp()).pow(gamma) * log_p_y).mean()
