"""Rare class sampling (RCS) of source images, as in DAFormer (Hoyer, Dai, Van Gool, CVPR 2022).

Instead of a uniform pass over the source set, each source image is drawn in two steps: a class
c with probability

    P(c) = softmax_c((1 - f_c) / T),

f_c being class c's share of the labelled source pixels and T the temperature (0.01 in DAFormer:
the rarest classes dominate), then uniformly one of the images that contain at least
`min_pixels` pixels of c. Images with rare classes are seen far more often, so the network meets
persons, poles and signs in most batches instead of a few. DAFormer also re-draws the crop up to
10 times until it holds enough pixels of c; this implementation does not (the crop is the data
module's usual random crop), which matters less when crops cover a large part of the image.

The per-image class pixel counts are computed once per dataset (one pass over the labels, with
a progress bar) and kept in memory by the sampler.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from udaseg.data.classes import IGNORE_INDEX
from udaseg.data.streams import InfiniteShardedSampler


@dataclass(frozen=True)
class RareClassSampling:
    """Settings of rare class sampling for the source stream (DAFormer's defaults).

    Args:
        temperature: T in P(c) = softmax((1 - f_c) / T); smaller = rarer classes favoured more.
        min_pixels: pixels of a class an image needs (at the dataset's resolution) to count as
            containing it. DAFormer's 3000 is 0.15 % of a GTA5 image; scale it with the image.
    """

    temperature: float = 0.01
    min_pixels: int = 3000

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"rare_class_sampling.temperature must be positive, got "
                             f"{self.temperature}")
        if self.min_pixels < 1:
            raise ValueError(f"rare_class_sampling.min_pixels must be >= 1, got "
                             f"{self.min_pixels}")


def class_pixel_counts(dataset: torch.utils.data.Dataset, num_classes: int,
                       progress: bool = True) -> np.ndarray:
    """(N, C) pixels of each class in each labelled sample (ignore label excluded).

    Reads labels through `SegmentationDataset.label` where the dataset has it (file datasets
    then skip decoding the images), else through `dataset[index]["label"]`.
    """
    read_label = getattr(dataset, "label", None) or (lambda index: dataset[index]["label"])
    counts = np.zeros((len(dataset), num_classes), np.int64)
    items = tqdm(range(len(dataset)), desc="source class pixels",
                 disable=not progress, file=sys.stderr, leave=False)
    for index in items:
        label = np.asarray(read_label(index)).ravel()
        label = label[label != IGNORE_INDEX]
        if label.size and label.max() >= num_classes:
            raise ValueError(f"sample {index} of {type(dataset).__name__} has label "
                             f"{int(label.max())}, expected train ids < {num_classes} or "
                             f"{IGNORE_INDEX}")
        counts[index] = np.bincount(label, minlength=num_classes)
    return counts


def rare_class_probabilities(pixel_counts: np.ndarray, temperature: float) -> np.ndarray:
    """P(c) = softmax((1 - f_c) / T) over the classes present in the set (absent ones get 0).

    Args:
        pixel_counts: (C,) or (N, C) class pixel counts; an (N, C) array is summed over images.
        temperature: T > 0.
    Returns:
        (C,) probabilities summing to 1.

    Example: with shares f = (0.9, 0.1) and T = 0.1, logits (1, 9): P = (3.4e-4, 0.99966).
    """
    totals = np.asarray(pixel_counts, np.float64)
    totals = totals.sum(0) if totals.ndim == 2 else totals
    if totals.sum() <= 0:
        raise ValueError("rare class sampling needs labelled pixels; the source set has none")
    shares = totals / totals.sum()
    logits = np.where(totals > 0, (1.0 - shares) / temperature, -np.inf)
    weights = np.exp(logits - logits[totals > 0].max())
    return weights / weights.sum()


class RareClassSampler(InfiniteShardedSampler):
    """Endless source indices drawn by rare class sampling, independently per rank.

    Draw k of rank r comes from a generator seeded by (seed, rank, block of draws), so a stream
    is a pure function of its seed, like `InfiniteShardedSampler` (which it subclasses for
    Lightning's DDP handling: Lightning leaves it alone).

    Args:
        pixel_counts: (N, C) from `class_pixel_counts`.
        settings: temperature and minimum pixels.
        num_replicas, rank, seed, start: as for `InfiniteShardedSampler` (yields
            `(position, index)` pairs too).
    """

    BLOCK = 4096

    def __init__(self, pixel_counts: np.ndarray, settings: RareClassSampling,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, start: int = 0) -> None:
        super().__init__(len(pixel_counts), num_replicas=num_replicas, rank=rank, seed=seed,
                         start=start)
        contains = np.asarray(pixel_counts) >= settings.min_pixels
        self.class_images = [np.flatnonzero(contains[:, c]) for c in range(contains.shape[1])]
        probabilities = rare_class_probabilities(pixel_counts, settings.temperature)
        # A class no image holds `min_pixels` of cannot be drawn.
        probabilities = np.where([len(i) > 0 for i in self.class_images], probabilities, 0.0)
        if probabilities.sum() == 0:
            raise ValueError(f"rare class sampling: no source image has {settings.min_pixels} "
                             "pixels of any class; lower rare_class_sampling.min_pixels")
        self.class_probabilities = probabilities / probabilities.sum()

    def image_probabilities(self) -> np.ndarray:
        """(N,) probability that one draw returns each image: the sum, over the classes the
        image holds `min_pixels` of, of P(c) / (number of images holding c). With it, the
        expected class mix of the stream (`benchmarks/rcs_shares.py`) is a weighted mean of
        the per-image class shares, with no sampling."""
        probabilities = np.zeros(self.dataset_size)
        for class_probability, images in zip(self.class_probabilities, self.class_images,
                                             strict=True):
            if len(images):
                probabilities[images] += class_probability / len(images)
        return probabilities

    def indices_from(self, start: int) -> Iterator[int]:
        block, offset = self.epoch + start // self.BLOCK, start % self.BLOCK
        while True:
            rng = np.random.default_rng([self.seed, self.rank, block])
            classes = rng.choice(len(self.class_probabilities), size=self.BLOCK,
                                 p=self.class_probabilities)
            picks = rng.random(self.BLOCK)
            for c, pick in zip(classes[offset:].tolist(), picks[offset:].tolist(), strict=True):
                images = self.class_images[c]
                yield int(images[min(int(pick * len(images)), len(images) - 1)])
            block, offset = block + 1, 0
