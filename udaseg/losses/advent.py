"""ADVENT: Vu, Jain, Bucher, Cord, Pérez, "ADVENT: Adversarial Entropy Minimization for Domain
Adaptation in Semantic Segmentation", CVPR 2019."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
