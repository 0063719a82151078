"""Tests of the procedural SyntheticStreets benchmark (udaseg.data.synthetic)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from udaseg.data.synthetic import (
    REAL_STYLE,
    SYNTHETIC_CLASSES,
    SYNTHETIC_LAYOUT,
    SYNTHETIC_STYLE,
    SyntheticStreets,
    domain_params,
    render_scene,
)

DOMAINS = ("synthetic", "real")
C = len(SYNTHETIC_CLASSES)
PERSON, POLE = SYNTHETIC_CLASSES.index("person"), SYNTHETIC_CLASSES.index("pole")


@pytest.fixture(scope="module")
def samples() -> dict[str, list[dict]]:
    return {d: [SyntheticStreets(d, "train", 50, seed=3)[i] for i in range(50)] for d in DOMAINS}


def test_classes_in_order():
    assert SYNTHETIC_CLASSES[:8] == ("road", "sidewalk", "building", "vegetation", "sky", "car",
                                     "person", "pole")
    ds = SyntheticStreets()
    assert ds.class_names == SYNTHETIC_CLASSES and ds.has_labels
    assert ds.eval_subsets["mIoU"] == list(range(C))
    assert {PERSON, POLE} <= set(ds.eval_subsets["mIoU-small"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_dtypes_and_label_values(domain, samples):
    for sample in samples[domain][:10]:
        image, label = sample["image"], sample["label"]
        assert image.shape == (128, 256, 3) and image.dtype == np.uint8
        assert label.shape == (128, 256) and label.dtype == np.uint8
        assert isinstance(sample["name"], str)
        assert set(np.unique(label).tolist()) <= set(range(C)) | {255}
    image, label = render_scene(domain, 5, 96, 160)
    assert image.shape == (96, 160, 3) and label.shape == (96, 160)


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_across_objects(domain):
    a = SyntheticStreets(domain, "val", 10, seed=7)
    b = SyntheticStreets(domain, "val", 10, seed=7)
    for i in (0, 3, 9):
        sa, sb = a[i], b[i]
        assert sa["image"].tobytes() == sb["image"].tobytes()
        assert sa["label"].tobytes() == sb["label"].tobytes()
        assert sa["name"] == sb["name"]
    image, label = render_scene(domain, a.image_seed(3))
    assert image.tobytes() == a[3]["image"].tobytes() and label.tobytes() == a[3]["label"].tobytes()
    assert a[-1]["image"].tobytes() == a[9]["image"].tobytes()


@pytest.mark.parametrize("domain", DOMAINS)
def test_index_seed_split_change_the_scene(domain):
    base = SyntheticStreets(domain, "train", 10, seed=0)
    others = [base[1], SyntheticStreets(domain, "train", 10, seed=1)[0],
              SyntheticStreets(domain, "val", 10, seed=0)[0],
              SyntheticStreets(domain, "test", 10, seed=0)[0]]
    for other in others:
        assert not np.array_equal(other["image"], base[0]["image"])
        assert not np.array_equal(other["label"], base[0]["label"])
    seeds = {SyntheticStreets(domain, split, 5, seed=s).image_seed(i)
             for split in ("train", "val", "test") for s in (0, 1) for i in range(5)}
    assert len(seeds) == 30


def test_global_rng_untouched():
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    SyntheticStreets("real", "train", 3)[2]
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("domain", DOMAINS)
def test_class_statistics(domain, samples):
    labels = np.stack([s["label"] for s in samples[domain]])
    counts = np.bincount(labels.ravel(), minlength=256)
    freq = counts[:C] / counts.sum()
    assert (counts[:C] > 0).all(), f"missing classes: {freq}"
    for big in ("road", "building", "vegetation", "sky"):
        assert freq[SYNTHETIC_CLASSES.index(big)] > 0.04
    for small in (PERSON, POLE, SYNTHETIC_CLASSES.index("traffic sign")):
        assert freq[small] < 0.03
    present = np.array([[(lab == k).any() for k in (PERSON, POLE)] for lab in labels]).mean(0)
    assert (present > 0.5).all(), present
    assert counts[255] / counts.sum() < 0.05


def _saturation(image: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean())


def _high_freq(image: np.ndarray) -> float:
    f = image.astype(np.float32)
    return float(np.abs(f - cv2.GaussianBlur(f, (0, 0), 1.0)).mean())


def test_domains_differ(samples):
    stats = {d: np.array([[_saturation(s["image"]), _high_freq(s["image"])]
                          for s in samples[d][:20]]).mean(0) for d in DOMAINS}
    assert stats["real"][0] < 0.7 * stats["synthetic"][0]          # duller palette
    assert abs(stats["real"][1] - stats["synthetic"][1]) > 0.3 * stats["synthetic"][1]
    mean_rgb = {d: np.mean([s["image"].reshape(-1, 3).mean(0) for s in samples[d][:20]], 0)
                for d in DOMAINS}
    assert np.abs(mean_rgb["real"] - mean_rgb["synthetic"]).max() > 10


def _boundary_contrast(image: np.ndarray, label: np.ndarray) -> float:
    """Mean image gradient on label boundaries / elsewhere."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    mag = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    lab = label.astype(np.int16)
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:] |= lab[1:] != lab[:-1]
    return float(mag[edge].mean() / mag[~edge].mean())


@pytest.mark.parametrize("domain", DOMAINS)
def test_label_aligned_with_image_but_not_trivial(domain, samples):
    batch = samples[domain][:20]
    aligned = np.mean([_boundary_contrast(s["image"], s["label"]) for s in batch])
    shifted = np.mean([_boundary_contrast(s["image"], np.roll(s["label"], 4, 1)) for s in batch])
    assert aligned > 2.0 and aligned > 1.3 * shifted
    # Class colours vary from image to image: no fixed colour -> class code.
    road = SYNTHETIC_CLASSES.index("road")
    road_means = np.array([s["image"][s["label"] == road].mean(0) for s in batch])
    assert road_means.std(0).max() > 5


def test_shift_knobs():
    style, layout = domain_params("real", appearance_shift=0.0, layout_shift=0.0)
    assert style.brightness == SYNTHETIC_STYLE.brightness and layout.cars == SYNTHETIC_LAYOUT.cars
    np.testing.assert_allclose(style.palette["road"], SYNTHETIC_STYLE.palette["road"])
    half, _ = domain_params("real", appearance_shift=0.5)
    assert half.noise[1] == pytest.approx((SYNTHETIC_STYLE.noise[1] + REAL_STYLE.noise[1]) / 2)
    mild = SyntheticStreets("real", num_images=20, appearance_shift=0.0, layout_shift=0.0)
    full = SyntheticStreets("real", num_images=20)
    assert np.mean([_saturation(mild[i]["image"]) for i in range(20)]) > \
        1.5 * np.mean([_saturation(full[i]["image"]) for i in range(20)])


def test_validation_and_unlabelled_mode():
    with pytest.raises(ValueError):
        SyntheticStreets("cartoon")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SyntheticStreets(split="dev")  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        SyntheticStreets(num_images=3)[3]
    sample = SyntheticStreets("real", num_images=2, with_labels=False)[0]
    assert "label" not in sample and sample["image"].shape == (128, 256, 3)


def test_dataloader_collates():
    loader = torch.utils.data.DataLoader(SyntheticStreets(num_images=4, height=64, width=128),
                                         batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 64, 128, 3) and batch["label"].shape == (2, 64, 128)


@pytest.mark.parametrize("domain", DOMAINS)
def test_version_2_scenes_have_bigger_small_classes_that_stay_rare(domain):
    def shares(version: int) -> np.ndarray:
        dataset = SyntheticStreets(domain, "val", 40, seed=5, version=version)
        counts = sum(np.bincount(dataset[i]["label"].ravel(), minlength=256) for i in range(40))
        return counts[:C] / counts[:C].sum()

    v1, v2 = shares(1), shares(2)
    road = SYNTHETIC_CLASSES.index("road")
    for small in ("person", "pole", "traffic sign"):
        k = SYNTHETIC_CLASSES.index(small)
        assert v2[k] > 2 * v1[k], small   # at least twice the pixels ...
        assert v2[k] < 0.05 < v2[road], small   # ... and still rare
    # Version 1 stays the original benchmark: the default presets, unchanged.
    assert domain_params(domain)[1] == domain_params(domain, version=1)[1]
    assert SyntheticStreets(domain).layout == domain_params(domain)[1]
    with pytest.raises(ValueError, match="unknown scene version 3"):
        SyntheticStreets(domain, version=3)
