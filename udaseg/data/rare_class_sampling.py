"""Rare class sampling (RCS) of source images, as in DAFormer (Hoyer, Dai, Van Gool, CVPR 2022).

Instead of a uniform pass over the source set, each source image is drawn in two steps: a class
c with probability

    P(c) = softmax_c((1 - f_c) / T),

f_c being class c's share of the labelled source pixels and T the temperature (0.01 in DAFormer:
the rarest classes dominate), then uniformly one of the images that hold more than `min_pixels`
pixels of c (a strict `>`, as in the official code). Images with rare classes are seen far more
often, so the network meets persons, poles and signs in most batches instead of a few.

The crop is then checked too: the sampler tells the dataset which class it drew (its keys are
`(position, index, class)`), and the source augmentation runs again, up to 10 times, until the
crop holds more than `min_pixels * min_crop_ratio` pixels of c, counted in the augmented
(resized, cropped) label; after 10 misses the last crop is kept. Each run is the whole source
augmentation, so a `cat_max_ratio` crop check happens inside every one of them, as in DAFormer.

The per-image class pixel counts are computed once per dataset (one pass over the labels, with
a progress bar) at the label files' own resolution, before any resize: DAFormer counts them in
its dataset conversion script on the original label files, so `min_pixels` (3000 by default)
is in full-resolution pixels whatever the training resize.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

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
        min_pixels: an image holds a class when it has more than this many pixels of it, in
            its full-resolution label file. DAFormer's 3000 is 0.15 % of a GTA5 image; scale
            it with the image.
        min_crop_ratio: the crop of an image drawn for class c is drawn again (at most 10
            times, the last one then kept) until it holds more than
            `min_pixels * min_crop_ratio` pixels of c in the augmented label; 0 = one crop.
    """

    temperature: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"rare_class_sampling.temperature must be positive, got "
                             f"{self.temperature}")
        if self.min_pixels < 0:
            raise ValueError(f"rare_class_sampling.min_pixels must be >= 0, got "
                             f"{self.min_pixels}")
        if self.min_crop_ratio < 0:
            raise ValueError(f"rare_class_sampling.min_crop_ratio must be >= 0, got "
                             f"{self.min_crop_ratio}")

    @property
    def crop_pixels(self) -> Optional[float]:
        """Pixels of the drawn class a crop must exceed, or None when crops are not checked."""
        return self.min_pixels * self.min_crop_ratio if self.min_crop_ratio > 0 else None


def class_pixel_counts(dataset: torch.utils.data.Dataset, num_classes: int,
                       progress: bool = True) -> np.ndarray:
    """(N, C) pixels of each class in each labelled sample (ignore label excluded).

    Counted at full resolution: through `full_resolution_label` where the dataset has it (file
    datasets: the label file at its own size, even where it differs from its image's, with no
    image decoded), else `SegmentationDataset.label`, else `dataset[index]["label"]`; never
    after the training resize.
    """
    read_label = (getattr(dataset, "full_resolution_label", None)
                  or getattr(dataset, "label", None)
                  or (lambda index: dataset[index]["label"]))
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
    """Endless source draws by rare class sampling, independently per rank.

    Yields `(position, index, class)`: the draw's position in this rank's stream, the image,
    and the class it was drawn for (what `TransformedDataset(class_crop_pixels=...)` checks the
    crop against). Draw k of rank r comes from a generator seeded by (seed, rank, block of
    draws), so a stream is a pure function of its seed, and one started at `start` continues
    it exactly, like `InfiniteShardedSampler` (which it subclasses for Lightning's DDP
    handling: Lightning leaves it alone).

    Args:
        pixel_counts: (N, C) from `class_pixel_counts`.
        settings: temperature and minimum pixels.
        num_replicas, rank, seed, start: as for `InfiniteShardedSampler`.
    """

    BLOCK = 4096

    def __init__(self, pixel_counts: np.ndarray, settings: RareClassSampling,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, start: int = 0) -> None:
        super().__init__(len(pixel_counts), num_replicas=num_replicas, rank=rank, seed=seed,
                         start=start)
        contains = np.asarray(pixel_counts) > settings.min_pixels
        self.class_images = [np.flatnonzero(contains[:, c]) for c in range(contains.shape[1])]
        probabilities = rare_class_probabilities(pixel_counts, settings.temperature)
        # A class no image holds more than `min_pixels` of cannot be drawn.
        probabilities = np.where([len(i) > 0 for i in self.class_images], probabilities, 0.0)
        if probabilities.sum() == 0:
            raise ValueError(f"rare class sampling: no source image has more than "
                             f"{settings.min_pixels} pixels of any class; lower "
                             "rare_class_sampling.min_pixels")
        self.class_probabilities = probabilities / probabilities.sum()

    def image_probabilities(self) -> np.ndarray:
        """(N,) probability that one draw returns each image: the sum, over the classes the
        image holds more than `min_pixels` of, of P(c) / (number of images holding c). With
        it, the expected class mix of the stream (`benchmarks/rcs_shares.py`) is a weighted
        mean of the per-image class shares, with no sampling."""
        probabilities = np.zeros(self.dataset_size)
        for class_probability, images in zip(self.class_probabilities, self.class_images,
                                             strict=True):
            if len(images):
                probabilities[images] += class_probability / len(images)
        return probabilities

    def draws_from(self, start: int) -> Iterator[tuple[int, int]]:
        """This rank's `(image index, class)` draws from draw `start` on."""
        block, offset = self.epoch + start // self.BLOCK, start % self.BLOCK
        while True:
            rng = np.random.default_rng([self.seed, self.rank, block])
            classes = rng.choice(len(self.class_probabilities), size=self.BLOCK,
                                 p=self.class_probabilities)
            picks = rng.random(self.BLOCK)
            for c, pick in zip(classes[offset:].tolist(), picks[offset:].tolist(), strict=True):
                images = self.class_images[c]
                yield int(images[min(int(pick * len(images)), len(images) - 1)]), c
            block, offset = block + 1, 0

    def indices_from(self, start: int) -> Iterator[int]:
        return (index for index, _ in self.draws_from(start))

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return ((position, index, c) for position, (index, c)
                in zip(itertools.count(self.start), self.draws_from(self.start)))
