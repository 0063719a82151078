"""DAFormer's ImageNet feature distance: the label downscaling by class ratio, the masked
distance (its empty-mask case included) and the component with its frozen encoder copy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from udaseg.adaptation import ImageNetFeatureDistance
from udaseg.losses import downscale_label_ratio, masked_feature_distance


class TinyEncoder(nn.Module):
    """Two stages at strides 2 and 4, with dropout and BN (both must be in eval in the copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.second = nn.Sequential(nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5),
                                    nn.Dropout(0.5))
        self.out_channels = (4, 5)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        first = self.first(images)
        return [first, self.second(first)]


def reference_downscale(labels: torch.Tensor, scale: int, min_ratio: float,
                        num_classes: int) -> torch.Tensor:
    """Block by block: the most frequent value (255 a value of its own) if its share is at
    least min_ratio and it is a class, else 255."""
    count, height, width = labels.shape
    out = torch.full((count, height // scale, width // scale), 255, dtype=torch.long)
    for n in range(count):
        for i in range(height // scale):
            for j in range(width // scale):
                block = labels[n, i * scale:(i + 1) * scale, j * scale:(j + 1) * scale]
                tally = Counter(block.flatten().tolist())
                best = max(tally.values())
                value = min(v if v != 255 else num_classes for v, c in tally.items() if c == best)
                if value < num_classes and best / block.numel() >= min_ratio:
                    out[n, i, j] = value
    return out


# ------------------------------------------------------------------ the losses
def test_downscale_label_ratio_matches_the_block_rule():
    generator = torch.Generator().manual_seed(0)
    # Few values, so blocks with a large majority occur; 3 plays the ignore label.
    labels = torch.randint(0, 4, (2, 12, 16), generator=generator)
    labels[0, :4, :4] = 1
    labels[1, :4, :4] = 255
    labels[labels == 3] = 255
    for scale in (2, 4):
        for min_ratio in (0.25, 0.5, 0.75, 1.0):
            assert torch.equal(downscale_label_ratio(labels, scale, min_ratio, 3),
                               reference_downscale(labels, scale, min_ratio, 3))
    blocks = downscale_label_ratio(labels, 4, 0.75, 3)
    assert blocks[0, 0, 0] == 1 and blocks[1, 0, 0] == 255     # an unlabelled block stays so


def test_downscale_label_ratio_ignore_counts_as_a_class_and_trailing_pixels_drop():
    labels = torch.tensor([[[2, 2, 255, 255, 0],
                            [2, 255, 255, 255, 0]]])
    # Block 1 is 3/4 ignore: ignored even at min_ratio 0.25 (class 2 is not the majority).
    assert downscale_label_ratio(labels, 2, 0.25, 3).tolist() == [[[2, 255]]]
    assert downscale_label_ratio(labels, 2, 0.8, 3).tolist() == [[[255, 255]]]
    with pytest.raises(ValueError, match="N, H, W"):
        downscale_label_ratio(labels[0], 2, 0.75, 3)


def test_masked_feature_distance_is_the_mean_l2_over_masked_pixels():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 6, 3, 4, generator=generator, requires_grad=True)
    reference = torch.randn(2, 6, 3, 4, generator=generator)
    mask = torch.rand(2, 3, 4, generator=generator) > 0.5
    norms = (student - reference).pow(2).sum(dim=1).sqrt()
    loss = masked_feature_distance(student, reference, mask)
    assert torch.allclose(loss, norms[mask].mean())
    assert torch.allclose(masked_feature_distance(student, reference), norms.mean())
    # The official loss (torch.mean of the selected norms) has the same gradient.
    official = torch.mean(torch.norm(student - reference, dim=1, p=2)[mask])
    ours_grad, = torch.autograd.grad(loss, student)
    official_grad, = torch.autograd.grad(official, student)
    assert torch.allclose(ours_grad, official_grad)


def test_empty_mask_gives_zero_with_the_officials_zero_gradient():
    """Officially NaN (mean of nothing) with zero gradients; here 0 with zero gradients, so a
    batch without thing pixels neither trips the non-finite guard nor moves the weights."""
    student = torch.randn(1, 3, 2, 2, requires_grad=True)
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    official = torch.mean(torch.norm(student - 1.0, dim=1, p=2)[empty])
    assert torch.isnan(official)
    official_grad, = torch.autograd.grad(official, student)
    loss = masked_feature_distance(student, torch.ones(1, 3, 2, 2), empty)
    assert loss.item() == 0.0
    grad, = torch.autograd.grad(loss, student)
    assert torch.equal(grad, official_grad) and not grad.any()
    # Identical features (the first iteration of a run without dropout): finite, zero gradients.
    same = masked_feature_distance(student, student.detach(), ~empty)
    assert same.item() == 0.0 and torch.isfinite(torch.autograd.grad(same, student)[0]).all()


# ------------------------------------------------------------------ the component
def component(**settings) -> tuple[TinyEncoder, ImageNetFeatureDistance]:
    torch.manual_seed(0)
    encoder = TinyEncoder()
    return encoder, ImageNetFeatureDistance(encoder, **settings)


def test_the_copy_is_frozen_in_eval_mode_and_independent_of_the_student():
    encoder, distance = component()
    parent = nn.ModuleDict({"student": encoder, "distance": distance})
    parent.train()
    assert encoder.training and distance.training
    assert not any(module.training for module in distance.encoder.modules())
    assert not any(parameter.requires_grad for parameter in distance.encoder.parameters())
    assert all(parameter.requires_grad for parameter in encoder.parameters())
    with torch.no_grad():
        encoder.first.weight.add_(1.0)
    assert not torch.equal(encoder.first.weight, distance.encoder.first.weight)
    images = torch.randn(2, 3, 16, 16)
    first, second = (distance.encoder(images)[-1] for _ in range(2))
    assert torch.equal(first, second)                   # no dropout, running BN statistics


def test_forward_is_the_weighted_distance_on_thing_pixels_of_the_last_stage():
    encoder, distance = component(weight=0.5, classes=(1,), min_ratio=0.75, num_classes=3)
    images = torch.randn(2, 3, 16, 16)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, :4, :8] = 1                               # two 4x4 blocks of class 1
    labels[1, :4, :3] = 1                               # 3/4 of a block: still counts
    labels[1, 4:8, :2] = 1                              # half a block: does not
    student = encoder(images)[-1] + 1.0                 # student features (N, 5, 4, 4)
    with torch.no_grad():
        reference = distance.encoder(images)[-1]
    norms = (student - reference).norm(dim=1)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[1, 0, 0] = True
    loss = distance(images, student, labels)
    assert torch.allclose(loss, 0.5 * norms[mask].mean())
    everywhere = ImageNetFeatureDistance(encoder, weight=0.5, classes=None, num_classes=3)
    everywhere.encoder.load_state_dict(distance.encoder.state_dict())
    assert torch.allclose(everywhere(images, student, labels), 0.5 * norms.mean())
    nothing = distance(images, student, torch.zeros_like(labels))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_gradients_reach_the_student_only():
    encoder, distance = component()
    images = torch.randn(2, 3, 16, 16)
    labels = torch.full((2, 16, 16), 13, dtype=torch.long)          # car everywhere
    distance(images, encoder(images)[-1], labels).backward()
    assert encoder.first.weight.grad is not None and encoder.first.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in distance.encoder.parameters())


def test_checkpoints_hold_the_copy():
    _, distance = component()
    state = distance.state_dict()
    assert "encoder.first.weight" in state and "class_ids" not in state
    torch.manual_seed(5)
    restored = ImageNetFeatureDistance(TinyEncoder())
    assert not torch.equal(restored.encoder.first.weight, distance.encoder.first.weight)
    restored.load_state_dict(state)
    assert torch.equal(restored.encoder.first.weight, distance.encoder.first.weight)


def test_bad_settings_and_shapes_are_refused():
    encoder = TinyEncoder()
    for settings, message in (({"classes": (3, 19)}, "classes"), ({"min_ratio": 0.0}, "min_ratio"),
                              ({"weight": -1.0}, "weight")):
        with pytest.raises(ValueError, match=message):
            ImageNetFeatureDistance(encoder, **settings)
    distance = ImageNetFeatureDistance(encoder)
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="last stage"):
        distance(images, encoder(images)[0], torch.zeros(1, 16, 16, dtype=torch.long))
    odd = torch.randn(1, 3, 18, 16)                     # 18 rows: 5 feature rows, 4 blocks
    with pytest.raises(ValueError, match="multiples of the encoder's output stride"):
        distance(odd, encoder(odd)[-1], torch.zeros(1, 18, 16, dtype=torch.long))
