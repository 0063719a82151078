"""ImageNet feature distance of DAFormer (Hoyer, Dai, Van Gool, "DAFormer: Improving Network
Architectures and Training Strategies for Domain-Adaptive Semantic Segmentation", CVPR 2022,
Sec. 3.3; code lhoyer/DAFormer): the student's bottleneck features on source images are kept near
those of a frozen copy of its ImageNet-pretrained encoder, on the pixels of chosen classes, so
the adaptation does not forget what ImageNet taught about them.

    L_FD = 1/|M| * sum_{j in M} || F_student(x)_j - F_ImageNet(x)_j ||_2

over the feature pixels j of the mask M (the source pixels of the chosen classes at feature
resolution, `downscale_label_ratio`), features (N, C, h, w) of the encoder's last stage.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def downscale_label_ratio(labels: torch.Tensor, scale: int, min_ratio: float, num_classes: int,
                          ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) labels -> (N, H // scale, W // scale) labels of `scale` x `scale` blocks.

    A block takes the value that covers the largest share of its pixels, the ignore label
    counted as a value of its own, when that share is at least `min_ratio`; otherwise (and
    when the ignore label wins) it is `ignore_index`. Values outside [0, num_classes) count as
    the ignore label. Rows and columns beyond the last whole block are dropped. On a tie the
    smaller class id wins (possible only with `min_ratio` <= 0.5). DAFormer's rule (official
    `downscale_label_ratio`, min_ratio 0.75), which marks the feature pixels whose receptive
    field is mostly one class.

    >>> labels = torch.tensor([[[1, 1, 2, 2], [1, 1, 255, 2]]])
    >>> downscale_label_ratio(labels, 2, 0.75, num_classes=3).tolist()
    [[[1, 2]]]
    >>> downscale_label_ratio(labels, 2, 1.0, num_classes=3).tolist()
    [[[1, 255]]]
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be (N, H, W), got shape {tuple(labels.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    # The ignore label is a class of its own here (index num_classes): a block mostly unlabelled
    # stays unlabelled rather than going to its labelled minority.
    values = torch.where(valid, labels, torch.full_like(labels, num_classes))
    shares = F.avg_pool2d(F.one_hot(values, num_classes + 1).permute(0, 3, 1, 2).float(),
                          kernel_size=scale)
    ratio, block = shares.max(dim=1)
    keep = (block < num_classes) & (ratio >= min_ratio)
    return torch.where(keep, block, torch.full_like(block, ignore_index))


def masked_feature_distance(student: torch.Tensor, reference: torch.Tensor,
                            mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the masked pixels of the L2 norm over channels of `student - reference`.

    `student`, `reference`: (N, C, h, w) features; `mask`: (N, h, w) bool, None = every pixel.
    Returns a scalar (float32), differentiable with respect to `student`.

    Empty mask (no pixel of the chosen classes in the batch): 0, with zero gradients. The
    official code takes `torch.mean` of the empty selection, which is NaN in its logs, but
    whose backward gives zero gradients (the mean's gradient is spread over no element), so
    the official step goes ahead with the other losses unchanged. Returning 0 keeps that
    gradient and lets udaseg's non-finite loss guard (`nonfinite_loss`) stop only for real
    divergence; the logged value of such an iteration is 0, not NaN.

    >>> student = torch.zeros(1, 2, 1, 2)
    >>> reference = torch.tensor([[[[3.0, 0.0]], [[4.0, 0.0]]]])
    >>> masked_feature_distance(student, reference).item()
    2.5
    >>> masked_feature_distance(student, reference, torch.tensor([[[True, False]]])).item()
    5.0
    >>> masked_feature_distance(student, reference, torch.zeros(1, 1, 2, dtype=torch.bool)).item()
    0.0
    """
    if student.shape != reference.shape:
        raise ValueError(f"student features {tuple(student.shape)} and reference features "
                         f"{tuple(reference.shape)} must have the same shape")
    distance = torch.linalg.vector_norm(student.float() - reference.float(), dim=1)
    if mask is None:
        return distance.mean()
    if mask.shape != distance.shape:
        raise ValueError(f"the mask must be (N, h, w) = {tuple(distance.shape)}, "
                         f"got {tuple(mask.shape)}")
    # torch.where rather than boolean indexing: no device sync for the selection's size.
    selected = torch.where(mask, distance, torch.zeros_like(distance))
    return selected.sum() / mask.sum().clamp_min(1)
