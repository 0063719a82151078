"""Rare class sampling (DAFormer): the class distribution, the per-image class index and the
endless per-rank sampler, and its use as the source stream of the data module."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from udaseg.data import (
    Augmentation,
    RareClassSampler,
    RareClassSampling,
    SyntheticStreets,
    UDADataModule,
    normalize,
)
from udaseg.data.base import SegmentationDataset
from udaseg.data.rare_class_sampling import class_pixel_counts, rare_class_probabilities
from udaseg.data.transforms import TransformedDataset


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
    draws = [index for (_, index, _), _ in zip(iter(sampler), range(20000), strict=False)]
    p_rare = sampler.class_probabilities[1]
    # Image 0 is drawn for the rare class, and as 1 of 100 images of class 0.
    expected = p_rare + (1 - p_rare) / 100
    assert abs(np.mean(np.array(draws) == 0) - expected) < 0.02
    assert expected > 0.5  # uniform sampling would give 0.01
    probabilities = sampler.image_probabilities()
    assert probabilities[0] == pytest.approx(expected)
    np.testing.assert_allclose(probabilities[1:], (1 - p_rare) / 100)
    assert probabilities.sum() == pytest.approx(1.0)
    again = [index for (_, index, _), _ in zip(iter(RareClassSampler(counts, settings, seed=3)),
                                          range(100), strict=False)]
    other_rank = [index for (_, index, _), _ in zip(
        iter(RareClassSampler(counts, settings, 2, 1, 3)), range(100), strict=False)]
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


class CornerDataset(SegmentationDataset):
    """32x32 random images of class 0 with a 12x12 block of class 1 in the top-left corner: a
    random 16x16 crop holds more than 50 pixels of class 1 about one time in six."""

    class_names = ("road", "person")

    def __init__(self, size: int = 4) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        image = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        label = np.zeros((32, 32), np.uint8)
        label[:12, :12] = 1
        return {"image": image, "label": label, "name": f"corner{index}"}


def corner_module(min_crop_ratio: float, cat_max_ratio: float | None = None) -> UDADataModule:
    # 144 pixels of class 1 > min_pixels 100; its crops must hold > 100 x ratio (50) of them.
    augmentation = Augmentation(crop=(16, 16), cat_max_ratio=cat_max_ratio, hflip=True)
    return UDADataModule(source=CornerDataset(), batch_size=8, source_augmentation=augmentation,
                         rare_class_sampling=RareClassSampling(temperature=0.01, min_pixels=100,
                                                               min_crop_ratio=min_crop_ratio))


def source_batches(data: UDADataModule, count: int) -> list[dict]:
    iterator = iter(data.train_dataloader())
    return [next(iterator)[0]["source"] for _ in range(count)]


def test_an_image_holds_a_class_with_strictly_more_than_min_pixels():
    # DAFormer keeps an image for class c when it has > min_pixels of c: 4 pixels qualify, 3 not.
    counts = np.array([[10, 3], [10, 4]])
    sampler = RareClassSampler(counts, RareClassSampling(temperature=1.0, min_pixels=3))
    assert sampler.class_images[1].tolist() == [1]
    assert sampler.class_images[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="no source image has more than 10 pixels"):
        RareClassSampler(counts, RareClassSampling(min_pixels=10))
    with pytest.raises(ValueError, match="min_crop_ratio must be >= 0"):
        RareClassSampling(min_crop_ratio=-0.5)


def test_class_statistics_are_counted_at_full_resolution():
    class HalfSizeLabels(SegmentationDataset):
        """`label` is the label at its image's (half) size; the file holds it at full size."""

        class_names = ("a", "b")

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> dict:
            return {"image": np.zeros((2, 2, 3), np.uint8), "label": self.label(index),
                    "name": "x"}

        def full_resolution_label(self, index: int) -> np.ndarray:
            return np.array([[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 255, 1], [0, 0, 0, 1]],
                            np.uint8)

        def label(self, index: int) -> np.ndarray:
            return self.full_resolution_label(index)[::2, ::2]

    np.testing.assert_array_equal(class_pixel_counts(HalfSizeLabels(), 2, progress=False),
                                  [[11, 4]])
    # The training resize does not change them either: they are the dataset's, not the crops'.
    source = SyntheticStreets("synthetic", "train", 3, height=32, width=64, version=2)
    data = UDADataModule(source=source, source_augmentation=Augmentation(resize=(8, 16)),
                         rare_class_sampling=RareClassSampling(min_pixels=4))
    counts = data.source_pixel_counts()
    assert counts.sum() == sum(int((source[i]["label"] != 255).sum()) for i in range(3))


def test_sampler_yields_the_class_each_image_was_drawn_for():
    counts = np.array([[900, 0, 50], [800, 200, 0], [700, 0, 300]])
    sampler = RareClassSampler(counts, RareClassSampling(temperature=0.5, min_pixels=40))
    draws = list(itertools.islice(iter(sampler), 3000))
    assert [position for position, _, _ in draws] == list(range(3000))
    assert all(counts[index, c] > 40 for _, index, c in draws)
    shares = np.bincount([c for _, _, c in draws], minlength=3) / len(draws)
    np.testing.assert_allclose(shares, sampler.class_probabilities, atol=0.03)


def test_crops_are_redrawn_until_they_hold_the_drawn_class():
    def share_holding_the_class(min_crop_ratio):
        labels = torch.cat([batch["label"] for batch in source_batches(
            corner_module(min_crop_ratio), 20)])
        return ((labels == 1).sum((1, 2)) > 50).float().mean().item()

    # One crop catches the corner about 16 % of the time; up to 11 crops about 86 %.
    single, redrawn = share_holding_the_class(0.0), share_holding_the_class(0.5)
    assert single < 0.35 and redrawn > 0.7


class CountingPipeline:
    """Wraps an albumentations pipeline, keeping every result it returns."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.results = pipeline, []

    def set_random_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, **data) -> dict:
        self.results.append(self.pipeline(**data))
        return self.results[-1]


@pytest.mark.parametrize("key, crop_pixels, runs", [
    ((0, 0, 1), 15.9, 1),     # every 4x4 crop of the all-class-1 label holds 16 > 15.9
    ((0, 0, 1), 16, 11),      # 16 is not > 16: ten re-draws, the last one kept unchecked
    ((0, 0, 1), None, 1),     # no crop check configured
    ((0, 0), 16, 1),          # no class in the key (uniform streams)
], ids=["holds", "strict", "unchecked", "two-element-key"])
def test_class_crop_check_is_strict_and_keeps_the_eleventh_crop(key, crop_pixels, runs):
    class OneClass(CornerDataset):
        def __getitem__(self, index: int) -> dict:
            return {**super().__getitem__(index), "label": np.ones((32, 32), np.uint8)}

    dataset = TransformedDataset(OneClass(), Augmentation(crop=(4, 4)), "imagenet",
                                 class_crop_pixels=crop_pixels)
    dataset.pipeline = CountingPipeline(dataset.pipeline)
    item = dataset[key]
    assert len(dataset.pipeline.results) == runs
    assert torch.equal(item["image"], normalize(dataset.pipeline.results[-1]["image"],
                                                "imagenet"))


def test_redrawn_crops_are_seeded_and_resume_exactly():
    def module():
        return corner_module(0.5, cat_max_ratio=0.75)

    plain = source_batches(module(), 3)
    again = source_batches(module(), 3)
    resumed_module = module()
    resumed_module.load_state_dict({"stream_draws": {"source": 16}, "iteration": 2,
                                    "world_size": 1})
    resumed_module.trainer = SimpleNamespace(global_step=2, global_rank=0, world_size=1)
    resumed = source_batches(resumed_module, 1)
    for expected, actual in [*zip(plain, again, strict=True), (plain[2], resumed[0])]:
        assert expected["name"] == actual["name"]
        assert torch.equal(expected["image"], actual["image"])
        assert torch.equal(expected["label"], actual["label"])
    assert not torch.equal(plain[0]["label"], plain[1]["label"])
