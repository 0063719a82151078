"""DAFormer's ImageNet feature distance as a component: a frozen copy of the student's encoder,
taken when the method is built (so with its ImageNet weights), and the distance of the student's
last-stage source features to that copy's (`udaseg.losses.masked_feature_distance`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from udaseg.losses import downscale_label_ratio, masked_feature_distance

#: DAFormer's thing classes of the Cityscapes train ids: traffic light, traffic sign, person,
#: rider, car, truck, bus, train, motorcycle, bicycle.
CITYSCAPES_THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


class ImageNetFeatureDistance(nn.Module):
    """`weight * L_FD` (DAFormer, Hoyer et al., CVPR 2022, Sec. 3.3; `udaseg.losses.
    feature_distance`): the L2 distance over channels between the student's last-stage
    features of the source images and those of a frozen copy of the encoder, averaged over the
    feature pixels whose label block (label width // feature width pixels on a side, as
    officially) is at least `min_ratio` one of `classes` (`downscale_label_ratio`).

    The copy is a submodule, so checkpoints hold it and a resumed run keeps the ImageNet
    features; it never trains (no gradient, `requires_grad` off) and stays in evaluation mode
    (no dropout or drop-path, BN running statistics) whatever mode the method is put in, as
    officially. A batch without a pixel of the classes gives 0 (officially NaN in the logs,
    with the same zero gradient: `masked_feature_distance`).

    Args:
        encoder: the student's encoder (`forward(images) -> list` of stage features); copied.
        weight: lambda_FD (0.005).
        classes: the classes whose pixels count (DAFormer: the Cityscapes thing classes,
            `CITYSCAPES_THING_CLASSES`); None = every feature pixel, labels unused.
        min_ratio: share of a label block one class must cover for the feature pixel to
            take it (0.75).
        num_classes, ignore_index: the labels' classes and ignore value.
    """

    def __init__(self, encoder: nn.Module, weight: float = 0.005,
                 classes: Optional[Sequence[int]] = CITYSCAPES_THING_CLASSES,
                 min_ratio: float = 0.75, num_classes: int = 19,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"the feature distance weight must be >= 0, got {weight}")
        if not 0 < min_ratio <= 1:
            raise ValueError(f"the feature distance min_ratio must be in (0, 1], got {min_ratio}")
        if classes is not None:
            classes = tuple(int(value) for value in classes)
            outside = [value for value in classes if not 0 <= value < num_classes]
            if outside or not classes:
                raise ValueError(f"the feature distance classes must be class ids in [0, "
                                 f"{num_classes}), got {list(classes)}")
        self.encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.weight = weight
        self.classes = classes
        self.min_ratio = min_ratio
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Not persistent: the classes are settings, not state.
        self.register_buffer("class_ids", torch.tensor(classes or (), dtype=torch.long),
                             persistent=False)

    def train(self, mode: bool = True) -> ImageNetFeatureDistance:
        super().train(mode)
        self.encoder.eval()
        return self

    def mask(self, labels: torch.Tensor, feature_size: tuple[int, int]) -> torch.Tensor:
        """(N, h, w) bool: the feature pixels that count, from (N, H, W) source labels."""
        scale = labels.shape[-1] // feature_size[-1]
        blocks = downscale_label_ratio(labels, scale, self.min_ratio, self.num_classes,
                                       self.ignore_index)
        if tuple(blocks.shape[-2:]) != tuple(feature_size):
            raise ValueError(
                f"the feature distance downscales {tuple(labels.shape[-2:])} labels by "
                f"{scale} (label width // feature width) to {tuple(blocks.shape[-2:])}, but "
                f"the features are {tuple(feature_size)}: use crops whose sides are "
                "multiples of the encoder's output stride")
        return torch.isin(blocks, self.class_ids)

    def forward(self, images: torch.Tensor, student_features: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """`weight * L_FD` (a scalar) of (N, 3, H, W) normalised source `images`, the
        student's (N, C, h, w) last-stage features of them and their (N, H, W) labels."""
        with torch.no_grad():
            reference = self.encoder(images)[-1]
        if reference.shape != student_features.shape:
            raise ValueError(f"the feature distance's encoder copy gives last-stage features "
                             f"{tuple(reference.shape)}, the student "
                             f"{tuple(student_features.shape)}: pass the student's last stage")
        mask = None if self.classes is None else self.mask(labels,
                                                           tuple(student_features.shape[-2:]))
        return self.weight * masked_feature_distance(student_features, reference, mask)
