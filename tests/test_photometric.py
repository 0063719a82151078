"""TUFL's strong view: the photometric steps, their seeding, and the target stream's second view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from udaseg.data import Augmentation, StrongView, SyntheticStreets, UDADataModule
from udaseg.data.photometric import shadow_pattern
from udaseg.data.transforms import TransformedDataset

OFF = StrongView(brightness=None, contrast=None, saturation=None, sharpness=None,
                 shadow_intensity=None, shadow_crop=None, noise_sd=None, blur_radius=None,
                 equalize_p=0.0)


def only(**settings) -> StrongView:
    """Every step disabled except the ones given."""
    return dataclasses.replace(OFF, **settings)


def scene(seed: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def flat(value: int, height: int = 32, width: int = 40) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def view(settings: StrongView, image: np.ndarray, seed: int = 0) -> np.ndarray:
    return settings(image, np.random.default_rng(seed))


def test_defaults_are_the_official_settings():
    assert StrongView() == StrongView(brightness=(0.4, 1.2), contrast=(0.4, 2.0),
                                      saturation=(0.5, 2.0), sharpness=(0.4, 2.0),
                                      shadow_intensity=(0.01, 0.3), shadow_crop=(0.02, 0.5),
                                      noise_sd=(3, 4), blur_radius=(0.0, 1.2), equalize_p=0.3)
    assert StrongView(brightness=[0.5, 0.9]).brightness == (0.5, 0.9)  # YAML lists -> tuples


def test_same_generator_state_same_output_and_input_untouched():
    image = scene()
    before = image.copy()
    first, second = view(StrongView(), image, 3), view(StrongView(), image, 3)
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, second)
    assert np.array_equal(image, before)
    assert not np.array_equal(first, view(StrongView(), image, 4))


def test_everything_disabled_is_the_identity():
    image = scene()
    out = view(OFF, image)
    assert np.array_equal(out, image) and out is not image


def test_brightness_scales_like_pil():
    out = view(only(brightness=(0.5, 0.5)), flat(100))
    assert (out == 50).all()


def test_colour_jitter_applies_the_pil_enhancers_in_the_official_order():
    image = scene()
    settings = only(brightness=(0.8, 0.8), contrast=(1.5, 1.5), saturation=(0.6, 0.6),
                    sharpness=(1.7, 1.7))
    expected = Image.fromarray(image)
    for enhancer, factor in ((ImageEnhance.Brightness, 0.8), (ImageEnhance.Contrast, 1.5),
                             (ImageEnhance.Color, 0.6), (ImageEnhance.Sharpness, 1.7)):
        expected = enhancer(expected).enhance(factor)
    assert np.array_equal(view(settings, image), np.asarray(expected))


def test_equalize_spreads_a_low_contrast_histogram():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 121, (40, 50, 3), dtype=np.uint8)
    out = view(only(equalize_p=1.0), image)
    assert out.max() - out.min() > 200
    assert np.array_equal(out, np.asarray(ImageOps.equalize(Image.fromarray(image))))
    applied = [not np.array_equal(view(only(equalize_p=0.3), image, seed), image)
               for seed in range(200)]
    assert 0.2 < np.mean(applied) < 0.4


@pytest.mark.parametrize("sd", [3, 4])
def test_noise_has_the_drawn_standard_deviation(sd):
    out = view(only(noise_sd=(sd, sd)), flat(128, 200, 200)).astype(np.float64)
    assert abs(out.std() - sd) < 0.1
    assert abs(out.mean() - 127.5) < 0.1  # truncation to uint8, as in the official code


def test_noise_sd_is_drawn_per_image_inclusive():
    stds = [view(only(noise_sd=(3, 4)), flat(128, 64, 64), seed).astype(float).std()
            for seed in range(20)]
    assert all(min(abs(std - 3), abs(std - 4)) < 0.25 for std in stds)
    assert min(stds) < 3.5 < max(stds)


def test_noise_is_clipped_to_the_pixel_range():
    out = view(only(noise_sd=(4, 4)), flat(255, 50, 50))
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() > 230


def test_blur_is_pil_gaussian_blur():
    image = scene()
    expected = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=1.0))
    assert np.array_equal(view(only(blur_radius=(1.0, 1.0)), image), np.asarray(expected))
    assert np.array_equal(view(only(blur_radius=(0.0, 0.0)), image), image)


def test_shadow_only_darkens_and_by_at_most_its_intensity():
    image = flat(200, 60, 80)
    outs = [view(only(shadow_intensity=(0.3, 0.3), shadow_crop=(0.02, 0.5)), image, seed)
            for seed in range(10)]
    for out in outs:
        assert out.max() <= 200 and out.min() >= 139  # 200 * (1 - 0.3) = 140, truncated
        # Grey pattern, same darkening on every channel.
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert any((out < 190).mean() > 0.05 for out in outs), "some shadow must show"
    assert len({out.tobytes() for out in outs}) == len(outs), "a new pattern per image"


def test_shadow_pattern_is_blotchy_grey_and_seeded():
    pattern = shadow_pattern(np.random.default_rng(0))
    assert pattern.dtype == np.uint8 and pattern.shape == (270, 480)
    assert pattern.min() == 0 and pattern.max() == 255
    assert 0.25 < (pattern > 127).mean() < 0.65
    assert np.array_equal(pattern, shadow_pattern(np.random.default_rng(0)))
    assert not np.array_equal(pattern, shadow_pattern(np.random.default_rng(1)))


def test_invalid_settings_are_refused():
    for bad in ({"brightness": (1.2, 0.4)}, {"shadow_intensity": (0.1, 1.5)},
                {"shadow_crop": (0.0, 0.5)}, {"noise_sd": (3.5, 4)}, {"equalize_p": 1.5},
                {"contrast": (1.0,)}):
        with pytest.raises(ValueError, match="StrongView"):
            StrongView(**bad)
    with pytest.raises(ValueError, match="uint8"):
        StrongView()(scene().astype(np.float32), np.random.default_rng(0))


# ------------------------------------------------------------------ the target stream
TARGET_AUGMENTATION = Augmentation(hflip=True, scale=(0.75, 1.25), crop=(24, 40),
                                   color_jitter=0.4)


def target_batch(strong_view, seed: int = 0) -> dict:
    data = UDADataModule(source=SyntheticStreets("synthetic", "train", 2, height=32, width=48),
                         target=SyntheticStreets("real", "train", 4, height=32, width=48),
                         target_augmentation=TARGET_AUGMENTATION, batch_size=2, seed=seed,
                         target_strong_view=strong_view)
    batch = next(iter(data.train_dataloader()))[0]
    assert "strong_image" not in batch["source"]
    return batch["target"]


def test_strong_view_is_the_same_crop_as_the_clean_view():
    target = target_batch(OFF)
    assert set(target) == {"image", "strong_image", "name", "original_size"}  # no label
    assert target["strong_image"].shape == target["image"].shape == (2, 3, 24, 40)
    assert torch.equal(target["strong_image"], target["image"])


def test_enabled_strong_view_differs_and_leaves_the_clean_view_alone():
    plain, strong = target_batch(None), target_batch(StrongView())
    assert "strong_image" not in plain and "label" not in strong
    assert torch.equal(plain["image"], strong["image"])  # clean view unchanged
    assert not torch.equal(strong["strong_image"], strong["image"])
    assert torch.equal(target_batch(StrongView())["strong_image"], strong["strong_image"])


def test_reseed_gives_each_copy_its_own_strong_view_stream():
    def strong(seed):
        dataset = TransformedDataset(SyntheticStreets("real", "train", 1, height=32, width=48),
                                     Augmentation(), "imagenet", keep_label=False,
                                     strong_view=StrongView())
        dataset.reseed(seed)
        return dataset[0]["strong_image"]

    assert torch.equal(strong(5), strong(5))
    assert not torch.equal(strong(5), strong(6))
