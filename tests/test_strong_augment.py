"""The strong augmentation of mixed images as official DACS/DAFormer apply it (kornia 0.5.8's
colour jitter and Gaussian blur): the steps against kornia's functional ops, the per-batch gates,
the per-image draws and the determinism of a generator."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch

from udaseg.adaptation import ClassMix, PseudoLabels, StrongAugmentation, strong_augment
from udaseg.adaptation.strong_augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
)

kornia = pytest.importorskip("kornia")


def images(count: int = 4, height: int = 24, width: int = 30, seed: int = 0) -> torch.Tensor:
    """Random RGB in [0, 1] with the HSV corner cases: grey, black and white pixels."""
    pixels = torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))
    pixels[:, :, :2] = pixels[:, :1, :2]
    pixels[:, :, -1, :3] = 0.0
    pixels[:, :, -1, 3:6] = 1.0
    return pixels


DEFAULT = StrongAugmentation()


def gates(jitter: bool, blur: bool, augmentation: StrongAugmentation = DEFAULT):
    """A generator whose two batch draws open (or close) the jitter and the blur."""
    for seed in range(1000):
        first, second = torch.rand(2, generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.float64).tolist()
        if (first > augmentation.jitter_gate) == jitter and \
                (second > augmentation.blur_gate) == blur:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("no such seed")


# ------------------------------------------------------------------ the steps
def test_colour_steps_equal_kornia_functional_ops():
    """kornia 0.5.8's jitter calls adjust_brightness(x, b - 1) (additive), adjust_contrast (x * c),
    adjust_saturation (HSV) and adjust_hue(x, h * 2 pi); kornia 0.9's functional ops keep those
    conventions. The HSV steps differ by kornia 0.9's smaller epsilon (1e-8 vs 0.5.8's 1e-6),
    a change of at most ~1e-6."""
    pixels = images()
    factors = torch.tensor([0.8, 1.0, 1.13, 1.2])
    shifts = torch.tensor([-0.2, 0.0, 0.07, 0.2])
    enhance = kornia.enhance
    torch.testing.assert_close(adjust_brightness(pixels, factors),
                               enhance.adjust_brightness(pixels, factors - 1), atol=1e-7, rtol=0)
    torch.testing.assert_close(adjust_contrast(pixels, factors),
                               enhance.adjust_contrast(pixels, factors), atol=1e-7, rtol=0)
    torch.testing.assert_close(adjust_saturation(pixels, factors),
                               enhance.adjust_saturation(pixels, factors), atol=5e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(pixels, shifts),
                               enhance.adjust_hue(pixels, shifts * 2 * math.pi), atol=5e-6, rtol=0)


def test_colour_step_conventions_are_kornia_0_5_8s():
    grey = torch.full((1, 3, 2, 2), 0.5)
    one = torch.ones(1)
    assert torch.allclose(adjust_brightness(grey, one * 1.1), grey + 0.1)    # not x * 1.1
    assert torch.allclose(adjust_brightness(grey, one * 1.6), torch.ones_like(grey))  # clamped
    assert torch.allclose(adjust_contrast(grey, one * 1.2), grey * 1.2)      # no mean blend
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(adjust_hue(red, one / 3), green, atol=1e-5)        # 1/3 turn: 120 deg
    pale = torch.tensor([0.8, 0.4, 0.4]).view(1, 3, 1, 1)                   # s = 0.5, v = 0.8
    assert torch.allclose(adjust_saturation(pale, one * 2), torch.tensor([0.8, 0.0, 0.0])
                          .view(1, 3, 1, 1), atol=1e-5)
    assert torch.allclose(adjust_saturation(pale, one * 4), adjust_saturation(pale, one * 2),
                          atol=1e-5)                                 # saturation clamped at 1


def test_blur_equals_kornia_gaussian_blur2d_with_the_official_kernel():
    pixels = images(3, 40, 64)
    sigma = torch.tensor([0.15, 0.6, 1.15])
    kernel = (blur_kernel_size(40), blur_kernel_size(64))
    assert kernel == (3, 7)
    expected = torch.cat([kornia.filters.gaussian_blur2d(pixels[i:i + 1], kernel,
                                                         (float(sigma[i]), float(sigma[i])),
                                                         border_type="reflect")
                          for i in range(3)])
    torch.testing.assert_close(gaussian_blur(pixels, kernel, sigma), expected, atol=1e-6, rtol=0)


def test_blur_kernel_is_the_official_odd_size():
    def official(side: int) -> int:
        tenth = np.ceil(0.1 * side)
        return int(np.floor(tenth - 0.5 + tenth % 2))

    assert blur_kernel_size(512) == 51 and blur_kernel_size(1024) == 103
    assert all(blur_kernel_size(side) == official(side) for side in range(1, 2100))


# ------------------------------------------------------------------ gates and draws
def test_closed_gates_change_nothing_and_open_ones_do():
    pixels = images(2, 40, 40)
    assert torch.equal(StrongAugmentation()(pixels, gates(jitter=False, blur=False)), pixels)
    jittered = StrongAugmentation()(pixels, gates(jitter=True, blur=False))
    # sigma 0.15 leaves a 3-pixel kernel almost the identity (as officially): wider ones here.
    blurred = StrongAugmentation(blur_sigma=(0.8, 1.15))(pixels, gates(jitter=False, blur=True))
    for changed in (jittered, blurred):
        assert (changed - pixels).abs().amax(dim=(1, 2, 3)).min() > 1e-3   # every image
    assert torch.equal(StrongAugmentation(jitter_gate=1.0, blur_gate=1.0)(
        pixels, torch.Generator().manual_seed(0)), pixels)


def test_gates_are_drawn_per_batch_with_the_official_frequencies():
    """Jitter when U > 0.2 (80 % of batches), blur when U > 0.5 (50 %); one decision for all the
    images of a batch."""
    jitter_calls, blur_calls = [], []

    def count_jitter(index):
        def step(image, factor):
            jitter_calls.append(index)
            return image
        return step

    def count_blur(pixels, kernel, sigma):
        blur_calls.append(pixels.shape[0])
        return pixels

    steps = tuple(count_jitter(index) for index in range(4))
    runs = 2000
    with mock.patch.object(strong_augment, "JITTER_STEPS", steps), \
            mock.patch.object(strong_augment, "gaussian_blur", count_blur):
        for seed in range(runs):
            StrongAugmentation()(torch.zeros(2, 3, 4, 4), torch.Generator().manual_seed(seed))
    assert len(jitter_calls) % 8 == 0                   # both images, all four steps
    assert 0.77 < len(jitter_calls) / 8 / runs < 0.83
    assert set(blur_calls) == {2} and 0.47 < len(blur_calls) / runs < 0.53


def test_factors_and_order_are_drawn_per_image():
    recorded: list[tuple[int, float]] = []

    def record(index):
        def step(image, factor):
            recorded.append((index, float(factor)))
            return image
        return step

    with mock.patch.object(strong_augment, "JITTER_STEPS", tuple(map(record, range(4)))):
        for seed in range(200):
            StrongAugmentation(jitter_gate=0.0)(torch.zeros(2, 3, 2, 2),
                                                torch.Generator().manual_seed(seed))
    orders = [tuple(index for index, _ in recorded[start:start + 4])
              for start in range(0, len(recorded), 4)]
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    assert len(set(orders)) == 24                       # kornia's random order, every one
    assert orders[0::2] != orders[1::2]                 # the two images' own orders
    values = {index: [factor for step, factor in recorded if step == index] for index in range(4)}
    for index in range(3):
        assert 0.8 <= min(values[index]) < 0.82 and 1.18 < max(values[index]) <= 1.2
    assert -0.2 <= min(values[3]) < -0.18 and 0.18 < max(values[3]) <= 0.2
    pixels = images(1, 40, 40).expand(2, -1, -1, -1)
    for jitter, blur in ((True, False), (False, True)):
        out = StrongAugmentation()(pixels, gates(jitter, blur))
        assert not torch.allclose(out[0], out[1])       # own factors / sigma per image


def test_same_generator_same_output_and_other_generator_other_output():
    pixels = images(2, 40, 40)
    first, second = (StrongAugmentation()(pixels, torch.Generator().manual_seed(3))
                     for _ in range(2))
    assert torch.equal(first, second)
    others = [StrongAugmentation()(pixels, torch.Generator().manual_seed(seed))
              for seed in range(4, 8)]
    assert any(not torch.equal(first, other) for other in others)


def test_settings_are_checked_and_yaml_lists_become_tuples():
    assert StrongAugmentation(blur_sigma=[0.2, 0.9]).blur_sigma == (0.2, 0.9)
    for settings, key in (({"jitter_strength": 0.6}, "jitter_strength"),
                          ({"jitter_gate": 1.5}, "jitter_gate"),
                          ({"blur_sigma": (1.0, 0.5)}, "blur_sigma"),
                          ({"blur_kernel_fraction": 0.0}, "blur_kernel_fraction")):
        with pytest.raises(ValueError, match=key):
            StrongAugmentation(**settings)


def test_class_mix_takes_it_as_its_photometric_step():
    labels = (torch.arange(40) // 20).expand(2, 40, 40).contiguous()
    source = {"image": torch.randn(2, 3, 40, 40), "label": labels}
    pseudo = PseudoLabels(torch.zeros(2, 40, 40, dtype=torch.long), torch.tensor(0.5))
    target = torch.randn(2, 3, 40, 40)
    mixed = [ClassMix(photometric=StrongAugmentation(jitter_gate=gate, blur_gate=gate))(
        source, target, pseudo, torch.Generator().manual_seed(1), "imagenet").images
        for gate in (1.0, 0.0)]
    assert mixed[0].shape == mixed[1].shape == (2, 3, 40, 40)
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)
