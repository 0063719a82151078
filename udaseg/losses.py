"""Loss functions, all pure: tensors in, scalar (or map) out, no module state.

Shapes: logits `z` are (N, C, H, W), `p = softmax(z, dim=1)`, labels (N, H, W) with ignore 255.
Each docstring gives the formula and the paper it comes from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to `size` = (H, W), `align_corners=True`.

    The official DeepLabV2 UDA code (AdaptSegNet, ADVENT, CLAN) upsamples with
    align_corners=True before every loss and at evaluation; we keep it so numbers match.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy, mean over labelled pixels.

    `CE = -1/|V| * sum_{i in V} log p_{i, y_i}`, V = pixels whose label is not `ignore_index`.
    Logits (N, C, h, w) are first upsampled to the label size (H, W), as in the official code.
    Returns 0 (with a graph) when no pixel is labelled, instead of NaN.
    """
    logits = upsample_logits(logits, tuple(labels.shape[-2:]))
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


# --------------------------------------------------------------------------------------------
# ADVENT: Vu, Jain, Bucher, Cord, Pérez, "ADVENT: Adversarial Entropy Minimization for Domain
# Adaptation in Semantic Segmentation", CVPR 2019.
# --------------------------------------------------------------------------------------------

def entropy_map(prob: torch.Tensor) -> torch.Tensor:
    """Weighted self-information map of ADVENT (Vu et al., CVPR 2019, Eq. 1 / Sec. 3.2).

    `I[n, c, h, w] = -p[n, c, h, w] * log2(p[n, c, h, w] + 1e-30) / log2(C)`

    `prob` is a softmax output (N, C, H, W) (probabilities along dim 1, C >= 2); the result has
    the same shape (N, C, H, W). Summing over C gives the per-pixel entropy normalised to [0, 1]
    (1 for the uniform distribution, 0 for a one-hot one). The 1e-30 keeps `log2` finite at
    p = 0 (the term is then 0) exactly as in the official `prob_2_entropy`; it is the input of
    the AdvEnt discriminator.
    """
    if prob.dim() != 4:
        raise ValueError(f"entropy_map expects (N, C, H, W) probabilities, got {tuple(prob.shape)}")
    num_classes = prob.shape[1]
    if num_classes < 2:
        raise ValueError("entropy_map needs at least 2 classes (log2(C) would be 0)")
    return -prob * torch.log2(prob + 1e-30) / math.log2(num_classes)


def entropy_loss(prob: torch.Tensor) -> torch.Tensor:
    """Direct entropy minimisation loss (MinEnt) of ADVENT (Vu et al., CVPR 2019, Eq. 2).

    `L_ent = 1/(N*H*W) * sum_{n, c, h, w} I[n, c, h, w]`
           `= -1/(N*H*W*log2(C)) * sum_{n, c, h, w} p * log2(p + 1e-30)`

    with `I = entropy_map(prob)`: the sum runs over classes too, the normalisation only over
    pixels, i.e. the mean over pixels of the normalised per-pixel entropy (in [0, 1]).
    This is the official normalisation (`advent/utils/loss.py::entropy_loss`).
    `prob` is a softmax output (N, C, H, W) (in ADVENT: of the target logits upsampled to the
    target input size); returns a scalar tensor.
    """
    n, _, h, w = prob.shape
    return entropy_map(prob).sum() / (n * h * w)


def bce_with_constant(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Mean binary cross-entropy with logits against a constant label map (ADVENT's `bce_loss`).

    `BCE = -1/|X| * sum_x [ y * log(sigmoid(z_x)) + (1 - y) * log(1 - sigmoid(z_x)) ]`, y = label
    everywhere, |X| = number of elements of `logits`.

    Vu et al., CVPR 2019 (ADVENT), adversarial training: discriminator outputs `logits` of any
    shape, typically (N, 1, h, w); label 0 = source, 1 = target (the segmenter is trained to
    make target maps look like source, i.e. `bce_with_constant(D(I_t), 0)`). Returns a scalar.
    """
    target = torch.full_like(logits, float(label))
    return F.binary_cross_entropy_with_logits(logits, target)


# --------------------------------------------------------------------------------------------
# MaxSquare: Chen, Xue, Cai, "Domain Adaptation for Semantic Segmentation with Maximum Squares
# Loss", ICCV 2019.
# --------------------------------------------------------------------------------------------

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
    single-image value (batch generalisation; documented in the README).
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


# --------------------------------------------------------------------------------------------
# Conservative Loss: Zhu, Zhou, Yang, Shi, Lin, "Penalizing Top Performers: Conservative Loss
# for Semantic Segmentation Adaptation", ECCV 2018. No public implementation exists.
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# CLAN: Luo, Zheng, Guan, Yu, Yang, "Taking a Closer Look at Domain Shift: Category-level
# Adversaries for Semantics Consistent Domain Adaptation", CVPR 2019 (code: RoyalVane/CLAN).
# --------------------------------------------------------------------------------------------

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
