"""Per-stream augmentation (albumentations) and input normalisation.

Normalisation is ours rather than albumentations' because the official DeepLabV2 weights expect
Caffe-style input: BGR channel order, mean subtraction, no division by the std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import albumentations as A
import cv2
import numpy as np
import torch

from udaseg.data.classes import IGNORE_INDEX
from udaseg.data.photometric import StrongView

Normalization = Literal["imagenet", "caffe_bgr", "signed"]

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
# Mean of the Caffe ResNet-101 the official DeepLabV2 weights come from, in BGR order.
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
# TensorFlow Lite preprocessing, (x - 127) / 128: what the EfficientNet-Lite weights expect.
SIGNED_CENTER, SIGNED_SCALE = 127.0, 128.0
# Second entropy word of the strong view's generator, next to the stream seed.
_STRONG_VIEW_STREAM = 0x5747
# Crops checked before the last one is kept whatever it holds (mmseg's RandomCrop and DAFormer's
# rare class sampling both check 10 and keep the 11th).
CROP_CHECKS = 10


class CategoryCappedCrop(A.RandomCrop):
    """mmseg's `RandomCrop(cat_max_ratio=...)`: a random crop, drawn again while it is dominated
    by one class.

    A crop is accepted when its label holds more than one class (the ignore label excluded) and
    the largest class covers less than `cat_max_ratio` of its labelled pixels. After
    `CROP_CHECKS` rejected crops the next one is kept unchecked. The positions come from the
    transform's own seeded generator, like `A.RandomCrop`'s; without a mask (an unlabelled
    stream) it is a plain random crop.
    """

    def __init__(self, height: int, width: int, cat_max_ratio: float,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(height=height, width=width)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def accepts(self, label: np.ndarray) -> bool:
        classes, counts = np.unique(label, return_counts=True)
        counts = counts[classes != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        crop = super().get_params_dependent_on_data(params, data)
        label = data.get("mask")
        if label is None:
            return crop
        for _ in range(CROP_CHECKS):
            x_min, y_min, x_max, y_max = crop["crop_coords"]
            if self.accepts(label[y_min:y_max, x_min:x_max]):
                break
            crop = super().get_params_dependent_on_data(params, data)
        return crop


@dataclass(frozen=True)
class Augmentation:
    """What one stream does to its images, in this order.

    Args:
        resize: (height, width) every image is resized to first, e.g. GTA5 (720, 1280).
        scale: (min, max) random rescale factor after the resize.
        crop: (height, width) random crop; smaller images are padded first (labels with 255).
        cat_max_ratio: with a crop and a label, the crop is drawn again (at most 10 times, the
            last draw then kept) until the label shows more than one class and none covers
            `cat_max_ratio` or more of its labelled pixels (mmseg's `RandomCrop`; DAFormer uses
            0.75 on its source sets). None = one plain random crop.
        hflip: random horizontal flip with probability 0.5.
        color_jitter: strength of brightness/contrast/saturation jitter (0 disables it).
        resize_label: False keeps the label at its original size (the evaluation protocol:
            predictions are upsampled to full label resolution). Only valid without scale/crop.
        pseudo_margins: (top, bottom, left, right) pixels of each target image, counted before
            any random step, whose pseudo-labels get weight 0 (HRDA and MIC: [30, 240, 30, 30]
            of Cityscapes at 2048x1024, against rectification borders and the ego car). The
            marked map follows the image through scale, crop and flip, so only crops at the
            border lose rows; the target batch carries it as "pseudo_valid" (N, H, W), 1 =
            trusted. None: no map.
    """

    resize: Optional[tuple[int, int]] = None
    scale: Optional[tuple[float, float]] = None
    crop: Optional[tuple[int, int]] = None
    cat_max_ratio: Optional[float] = None
    hflip: bool = False
    color_jitter: float = 0.0
    resize_label: bool = True
    pseudo_margins: Optional[tuple[int, int, int, int]] = None

    def __post_init__(self) -> None:
        if self.pseudo_margins is not None and (len(self.pseudo_margins) != 4
                                                or min(self.pseudo_margins) < 0):
            raise ValueError(f"Augmentation.pseudo_margins must be (top, bottom, left, right) "
                             f"pixel counts >= 0, got {self.pseudo_margins}")
        if not self.resize_label and (self.scale or self.crop or self.hflip):
            raise ValueError("Augmentation(resize_label=False) only allows `resize`: random "
                             "geometry would misalign image and full-resolution label")
        if self.cat_max_ratio is not None:
            if self.crop is None:
                raise ValueError("Augmentation.cat_max_ratio needs `crop`: it re-draws crops")
            if not 0 < self.cat_max_ratio < 1:
                raise ValueError(f"Augmentation.cat_max_ratio must be in (0, 1), got "
                                 f"{self.cat_max_ratio} (None disables it)")

    def build(self) -> A.Compose:
        """The albumentations pipeline for image+mask (image-only resize handled separately)."""
        ops: list[A.BasicTransform] = []
        if self.resize is not None and self.resize_label:
            ops.append(A.Resize(height=self.resize[0], width=self.resize[1]))
        if self.scale is not None:
            low, high = self.scale
            ops.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0))
        if self.crop is not None:
            ops.append(A.PadIfNeeded(min_height=self.crop[0], min_width=self.crop[1],
                                     border_mode=cv2.BORDER_CONSTANT, fill=0,
                                     fill_mask=IGNORE_INDEX))
            if self.cat_max_ratio is None:
                ops.append(A.RandomCrop(height=self.crop[0], width=self.crop[1]))
            else:
                ops.append(CategoryCappedCrop(self.crop[0], self.crop[1], self.cat_max_ratio))
        if self.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if self.color_jitter > 0:
            strength = self.color_jitter
            ops.append(A.ColorJitter(brightness=strength, contrast=strength,
                                     saturation=strength, hue=0.0, p=0.8))
        # strict: a misspelled argument must fail, not silently pad masks with 0. The shape
        # check is off only when the label deliberately keeps its full resolution.
        return A.Compose(ops, strict=True, is_check_shapes=self.resize_label)


def _channel_statistics(normalization: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per input channel: input = (pixels - mean) / scale, pixels 0-255 in the
    input's channel order (BGR for caffe_bgr)."""
    if normalization == "imagenet":
        return IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
    if normalization == "signed":
        return np.full(3, SIGNED_CENTER, np.float32), np.full(3, SIGNED_SCALE, np.float32)
    if normalization == "caffe_bgr":
        return CAFFE_MEAN_BGR, np.ones(3, np.float32)
    raise ValueError("normalization must be 'imagenet', 'caffe_bgr' or 'signed', got "
                     f"{normalization!r}")


def normalize(image: np.ndarray, normalization: Normalization) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 network input."""
    mean, scale = _channel_statistics(normalization)
    pixels = image.astype(np.float32)
    if normalization == "caffe_bgr":
        pixels = pixels[..., ::-1]
    pixels = (pixels - mean) / scale
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def denormalize(images: torch.Tensor, normalization: Normalization) -> np.ndarray:
    """(N, 3, H, W) network input -> (N, H, W, 3) uint8 RGB, for visualisation."""
    mean, scale = _channel_statistics(normalization)
    pixels = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1) * scale + mean
    if normalization == "caffe_bgr":
        pixels = pixels[..., ::-1]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _statistics_on(device: torch.device, normalization: Normalization) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    mean, scale = _channel_statistics(normalization)
    return (torch.as_tensor(mean, device=device).view(1, 3, 1, 1),
            torch.as_tensor(scale, device=device).view(1, 3, 1, 1))


def input_to_unit_rgb(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """(N, 3, H, W) network input -> RGB in [0, 1] on the same device (differentiable), for
    augmentations applied to batches on the device (DACS/CIM mixed images)."""
    mean, scale = _statistics_on(images.device, normalization)
    pixels = (images.float() * scale + mean) / 255.0
    return pixels.flip(1) if normalization == "caffe_bgr" else pixels


def unit_rgb_to_input(pixels: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Inverse of `input_to_unit_rgb`."""
    mean, scale = _statistics_on(pixels.device, normalization)
    if normalization == "caffe_bgr":
        pixels = pixels.flip(1)
    return (pixels * 255.0 - mean) / scale


def pseudo_margin_map(size: tuple[int, int], margins: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) uint8 map of `size`: 0 on the (top, bottom, left, right) `margins`, 1 inside.

    >>> pseudo_margin_map((4, 3), (1, 2, 0, 1)).tolist()
    [[0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]]
    """
    top, bottom, left, right = margins
    height, width = size
    valid = np.zeros((height, width), np.uint8)
    valid[top:max(top, height - bottom), left:max(left, width - right)] = 1
    return valid


class TransformedDataset(torch.utils.data.Dataset):
    """Applies one stream's augmentation and normalisation to a `SegmentationDataset`.

    `label_dtype`: int64 for training streams (what the losses index with); the evaluation
    loaders ask for uint8 (every train id and the ignore label fit), an eighth of the bytes to
    copy to the device, which the confusion matrix reads directly.

    `keep_label=False` is how the target training stream is built: the label is dropped here,
    before collation, so target labels can never reach a training step.

    `strong_view` (target stream, consistency methods such as TUFL) adds "strong_image": the
    same augmented crop as "image", pixel for pixel, after `StrongView`'s photometric steps,
    normalised the same way. Its parameters come from `self.rng`, which `reseed` re-creates
    from the same seed as the augmentation pipeline (but as a separate stream).

    Indexed by a `(position, index)` pair (the training streams' samplers), a sample's random
    draws are seeded by (`reseed`'s seed, position) alone: the same draw gets the same crop in
    any worker process and after a resume. A plain index continues the sequential stream
    `reseed` started.

    `class_crop_pixels` (rare class sampling's source stream): a `(position, index, class_id)`
    key, as `RareClassSampler` yields, asks for a crop holding more than `class_crop_pixels`
    pixels of `class_id`, counted in the augmented label. The whole augmentation runs again
    (continuing the same seeded draws) until it does, at most `CROP_CHECKS` times; the last
    run is then kept whatever it holds. Without it, or with a two-element key, one run.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, augmentation: Augmentation,
                 normalization: Normalization, keep_label: bool = True,
                 strong_view: Optional[StrongView] = None,
                 label_dtype: torch.dtype = torch.int64,
                 class_crop_pixels: Optional[float] = None) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self.normalization = normalization
        self.keep_label = keep_label
        self.label_dtype = label_dtype
        self.strong_view = strong_view
        self.class_crop_pixels = class_crop_pixels
        if keep_label and augmentation.pseudo_margins is not None:
            raise ValueError("Augmentation.pseudo_margins mark the pseudo-labels of target "
                             "images: set them on data.target_augmentation only")
        self.pipeline = augmentation.build()
        self.rng = np.random.default_rng()
        self.seed = 0

    def reseed(self, seed: int) -> None:
        """Give this copy of the pipeline its own random stream (per stream and rank)."""
        self.seed = seed
        self._seed_draws(seed)

    def _seed_draws(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)
        # albumentations seeds its own generator with `seed` itself: a different key keeps the
        # strong view's draws independent of the crops and flips.
        self.rng = np.random.default_rng([seed, _STRONG_VIEW_STREAM])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> dict:
        wanted_class = None
        if isinstance(key, tuple):
            position, index, *drawn_class = key
            entropy = np.random.SeedSequence([self.seed, position]).generate_state(1)
            self._seed_draws(int(entropy[0]))
            if drawn_class and self.class_crop_pixels is not None:
                wanted_class = drawn_class[0]
        else:
            index = key
        sample = self.dataset[index]
        image, label = sample["image"], sample.get("label")
        original_size = torch.tensor(image.shape[:2])
        if label is None and self.keep_label:
            raise ValueError(f"{type(self.dataset).__name__} returned no label for "
                             f"{sample.get('name', index)!r}, but this stream needs labels")
        keep = self.keep_label and label is not None
        if self.augmentation.resize is not None and not self.augmentation.resize_label:
            height, width = self.augmentation.resize
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if keep:
            out = self.pipeline(image=image, mask=label)
            if wanted_class is not None:
                for _ in range(CROP_CHECKS):
                    if np.count_nonzero(out["mask"] == wanted_class) > self.class_crop_pixels:
                        break
                    out = self.pipeline(image=image, mask=label)
            image, label = out["image"], out["mask"]
        elif self.augmentation.pseudo_margins is not None:
            out = self.pipeline(image=image, mask=pseudo_margin_map(
                image.shape[:2], self.augmentation.pseudo_margins))
            image, valid = out["image"], out["mask"]
        else:
            image = self.pipeline(image=image)["image"]
        item = {"image": normalize(image, self.normalization), "name": sample["name"],
                "original_size": original_size}
        if not keep and self.augmentation.pseudo_margins is not None:
            # Padding fills masks with the ignore label: padded pixels are not trusted either.
            item["pseudo_valid"] = torch.from_numpy(np.ascontiguousarray(valid == 1))
        if self.strong_view is not None:  # from the clean view's final pixels: the same crop
            item["strong_image"] = normalize(self.strong_view(image, self.rng),
                                             self.normalization)
        if keep:
            label = np.ascontiguousarray(label)
            if self.label_dtype == torch.uint8 and label.dtype != np.uint8:
                if label.size and (label.min() < 0 or label.max() > 255):
                    raise ValueError(f"{type(self.dataset).__name__} label "
                                     f"{sample.get('name', index)!r} has ids outside 0..255, "
                                     "which uint8 evaluation labels cannot hold")
                label = label.astype(np.uint8)
            item["label"] = torch.from_numpy(label).to(self.label_dtype)
        return item
