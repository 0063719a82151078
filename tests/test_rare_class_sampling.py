"""Rare class sampling (DAFormer): the class distribution, the per-image class index and the
endless per-rank sampler, and its use as the source stream of the data module."""

from __future__ import annotations

import numpy as np
import pytest

from udaseg.data import RareClassSampler, RareClassSampling, SyntheticStreets, UDADataModule
from udaseg.data.rare_class_sampling import class_pixel_counts, rare_class_probabilities


def test_probabilities_match_hand_computed_softmax():
    # shares (0.9, 0.1, 0): logits (1 - f) / T = (1, 9) for T = 0.1; the absent class gets 0.
    probabilities = rare_class_probabilities(np.array([900, 100, 0]), temperature=0.1)
    expected = np.exp([1.0, 9.0]) / np.exp([1.0, 9.0]).sum()
    np.testing.assert_allclose(probabilities, [expected[0], expected[1], 0.0])
    assert probabilities.sum() == pytest.approx(1.0)
    # (N, C) counts are summed over images first.
    np.testing.assert_allclose(rare_class_probabilities(np.array([[450, 0, 0], [450, 100, 0]]),
                                                        0.1), probabilities)
    with pytest.raises(ValueError, match="no"):
        rare_class_probabilities(np.zeros(3), 0.1)


def test_class_pixel_counts_ignore_and_bad_labels():
    labels = [np.array([[0, 0, 255], [2, 2, 2]], np.uint8), np.array([[1, 255]], np.uint8)]
    dataset = [{"label": label} for label in labels]
    np.testing.assert_array_equal(class_pixel_counts(dataset, 3, progress=False),
                                  [[2, 0, 3], [0, 1, 0]])
    with pytest.raises(ValueError, match="sample 0 of list has label 2, expected train ids < 2"):
        class_pixel_counts(dataset, 2, progress=False)


def test_sampler_favours_images_with_rare_classes_and_is_seeded():
    # Image 0 alone holds the rare class 1 (1 % of the pixels); 99 images hold only class 0.
    counts = np.zeros((100, 2), np.int64)
    counts[:, 0] = 1000
    counts[0, 1] = 1000
    settings = RareClassSampling(temperature=0.5, min_pixels=10)
    sampler = RareClassSampler(counts, settings, seed=3)
    draws = [index for (_, index), _ in zip(iter(sampler), range(20000), strict=False)]
    p_rare = sampler.class_probabilities[1]
    # Image 0 is drawn for the rare class, and as 1 of 100 images of class 0.
    expected = p_rare + (1 - p_rare) / 100
    assert abs(np.mean(np.array(draws) == 0) - expected) < 0.02
    assert expected > 0.5  # uniform sampling would give 0.01
    probabilities = sampler.image_probabilities()
    assert probabilities[0] == pytest.approx(expected)
    np.testing.assert_allclose(probabilities[1:], (1 - p_rare) / 100)
    assert probabilities.sum() == pytest.approx(1.0)
    again = [index for (_, index), _ in zip(iter(RareClassSampler(counts, settings, seed=3)),
                                       range(100), strict=False)]
    other_rank = [index for (_, index), _ in zip(iter(RareClassSampler(counts, settings, 2, 1, 3)),
                                            range(100), strict=False)]
    assert again == draws[:100] and other_rank != draws[:100]


def test_class_without_enough_pixels_is_never_drawn():
    counts = np.array([[100, 5], [100, 5]])
    sampler = RareClassSampler(counts, RareClassSampling(temperature=0.01, min_pixels=10))
    assert sampler.class_probabilities[1] == 0.0
    with pytest.raises(ValueError, match="lower rare_class_sampling.min_pixels"):
        RareClassSampler(counts, RareClassSampling(min_pixels=1000))
    with pytest.raises(ValueError, match="temperature must be positive"):
        RareClassSampling(temperature=0)


def test_data_module_source_stream_uses_rare_class_sampling():
    source = SyntheticStreets("synthetic", "train", 12, height=32, width=64, version=2)
    data = UDADataModule(source=source, batch_size=2,
                         rare_class_sampling=RareClassSampling(temperature=0.01, min_pixels=4))
    loader = data.train_dataloader()
    sampler = loader.iterables["source"].sampler
    assert isinstance(sampler, RareClassSampler)
    counts = class_pixel_counts(source, 9, progress=False)
    np.testing.assert_array_equal(data._source_pixel_counts, counts)
    batch = next(iter(loader))[0]
    assert batch["source"]["image"].shape == (2, 3, 32, 64)
