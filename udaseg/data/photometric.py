"""The strong (photometrically augmented) target view of TUFL.

Source: Yan et al., "Threshold-Adaptive Unsupervised Focal Loss for Domain Adaptation of
Semantic Segmentation", IEEE T-ITS 2023; official code `ywher/TUFL` (e84db35),
`datasets/transform_image.py` and the unsupervised branch of `datasets/crosscity.py`.

TUFL feeds the network two views of each target crop: the clean view (the target stream's own
flip, scale and crop, i.e. `Augmentation`) and a strong view, which is the same crop, pixel for
pixel, after the photometric steps implemented here. The random affine (rotation, shear, scale,
flip) that the method applies on top of the strong view is not part of this module: the method
applies it to the batch on the device, together with the matching warp of the clean logits.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = ["SHADOW_PATTERN_SIZE", "StrongView", "shadow_pattern"]

FloatRange = tuple[float, float]

# (height, width) of the procedural shadow pattern: a quarter of the official 1080x1920 JPEG per
# side. The pattern is cropped and resized to the image, so only its aspect ratio and the
# blob size relative to it matter, not its resolution.
SHADOW_PATTERN_SIZE = (270, 480)
# Low-resolution noise grids (rows, columns) of the pattern: coarse blobs plus finer ragged edges.
_COARSE_GRID, _FINE_GRID = (9, 16), (27, 48)
_FINE_WEIGHT = 0.35
# Fraction of the pattern that is shadow, drawn per pattern (the official one is about 42 %).
_SHADOW_COVERAGE = (0.3, 0.6)
# Width of the soft edge, in standard deviations of the smooth field.
_EDGE_SOFTNESS = 0.08

_ROTATIONS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def shadow_pattern(rng: np.random.Generator,
                   size: tuple[int, int] = SHADOW_PATTERN_SIZE) -> np.ndarray:
    """A procedural, blotchy shadow pattern: (H, W) uint8, 255 = full shadow, 0 = none.

    Uniform noise on a coarse grid plus a weaker finer grid, each upsampled bicubically to
    `size`, is a smooth random field; thresholding it at a random quantile (so that 30-60 % of
    the pattern is shadow) with a narrow soft edge gives irregular blobs with sharp-ish
    borders, grey 0..255 like the official pattern photograph.
    """
    height, width = size
    field = np.zeros((height, width), dtype=np.float32)
    for grid, weight in ((_COARSE_GRID, 1.0), (_FINE_GRID, _FINE_WEIGHT)):
        noise = rng.random(grid, dtype=np.float32)
        field += weight * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    threshold = np.quantile(field, 1.0 - rng.uniform(*_SHADOW_COVERAGE))
    softness = max(float(field.std()) * _EDGE_SOFTNESS, 1e-6)
    shadow = np.clip((field - threshold) / softness + 0.5, 0.0, 1.0)
    return np.round(shadow * 255.0).astype(np.uint8)


def _check_range(name: str, value: Optional[tuple], low: float = 0.0,
                 high: float = float("inf")) -> Optional[tuple]:
    if value is None:
        return None
    value = tuple(value)
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"StrongView.{name} must be (min, max) with {low} <= min <= max <= "
                         f"{high}, or None to disable the step; got {value!r}")
    return value


@dataclass(frozen=True)
class StrongView:
    """TUFL's photometric strong view of a (H, W, 3) uint8 RGB image, in the official order.

    1. Colour jitter with PIL `ImageEnhance` factors drawn uniformly (all four drawn first, then
       applied): Brightness, Contrast, Color (saturation), Sharpness.
    2. Shadow overlay: a random crop of the shadow pattern (width and height each an
       independent fraction of the pattern's in `shadow_crop`), resized bilinearly to the
       image, rotated by 90, 180 or 270 degrees, flipped left-right, top-bottom and inverted
       with probability 0.5 each, resized to the image again; with an intensity `s` drawn in
       `shadow_intensity`, `image * (1 - s * pattern / 255)`, truncated to uint8.
    3. Additive Gaussian noise, sd an integer drawn in `noise_sd` (inclusive; official
       `np.random.randint(3, 5)`) on the 0..255 scale, clipped to 0..255 and truncated to uint8.
    4. PIL `GaussianBlur` with a radius drawn uniformly in `blur_radius`.
    5. PIL `ImageOps.equalize` (histogram equalisation) with probability `equalize_p`.

    Setting a field to None (or `equalize_p` to 0) disables that step; a step that is disabled
    draws nothing from the generator. With every step disabled the view is the identity.

    Deliberate differences from the official code:

    * Every parameter is drawn per image from the generator passed in (seeded by the data
      pipeline). The official `Noise_image` and `Blur_image` draw the noise sd and the blur
      radius once, when the dataset object is built, so all images of a run share them.
    * The official shadow pattern is a photograph (`datasets/shadow_pattern.jpg`) that cannot
      be redistributed; udaseg generates a procedural pattern instead (`shadow_pattern`:
      thresholded smooth random blobs), a new one per image from the same generator.

    Args:
        brightness / contrast / saturation / sharpness: (min, max) enhancement factors
            (1 = unchanged).
        shadow_intensity: (min, max) shadow strength `s` in [0, 1].
        shadow_crop: (min, max) side fraction of the pattern that is cropped, in (0, 1].
        noise_sd: (min, max) integer noise standard deviation, both inclusive.
        blur_radius: (min, max) Gaussian blur radius in pixels.
        equalize_p: probability of histogram equalisation.
    """

    brightness: Optional[FloatRange] = (0.4, 1.2)
    contrast: Optional[FloatRange] = (0.4, 2.0)
    saturation: Optional[FloatRange] = (0.5, 2.0)
    sharpness: Optional[FloatRange] = (0.4, 2.0)
    shadow_intensity: Optional[FloatRange] = (0.01, 0.3)
    shadow_crop: Optional[FloatRange] = (0.02, 0.5)
    noise_sd: Optional[tuple[int, int]] = (3, 4)
    blur_radius: Optional[FloatRange] = (0.0, 1.2)
    equalize_p: float = 0.3

    def __post_init__(self) -> None:
        bounds = {"shadow_intensity": (0.0, 1.0), "shadow_crop": (1e-9, 1.0)}
        for field in fields(self):
            if field.name != "equalize_p":
                value = _check_range(field.name, getattr(self, field.name),
                                     *bounds.get(field.name, ()))
                object.__setattr__(self, field.name, value)
        if self.noise_sd is not None and not all(float(sd).is_integer() for sd in self.noise_sd):
            raise ValueError(f"StrongView.noise_sd must be integers, got {self.noise_sd!r}")
        if not 0.0 <= self.equalize_p <= 1.0:
            raise ValueError(f"StrongView.equalize_p must be in [0, 1], got {self.equalize_p}")

    @property
    def shadow_enabled(self) -> bool:
        return self.shadow_intensity is not None and self.shadow_crop is not None

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The strong view of `image` as a new (H, W, 3) uint8 array; `image` is untouched.
        Pure: the same generator state gives the same output."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("StrongView expects an (H, W, 3) uint8 RGB image, got "
                             f"{image.dtype} {image.shape}")
        picture = Image.fromarray(np.ascontiguousarray(image))
        picture = self._color_jitter(picture, rng)
        if self.shadow_enabled:
            picture = self._shadow(picture, rng)
        if self.noise_sd is not None:
            picture = self._noise(picture, rng)
        if self.blur_radius is not None:
            radius = rng.uniform(*self.blur_radius)
            if radius > 0:
                picture = picture.filter(ImageFilter.GaussianBlur(radius=radius))
        if self.equalize_p > 0 and rng.random() < self.equalize_p:
            picture = ImageOps.equalize(picture)
        return np.array(picture, dtype=np.uint8)  # a copy, never a view of the input

    def _color_jitter(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        enhancers = (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                     ("saturation", ImageEnhance.Color), ("sharpness", ImageEnhance.Sharpness))
        steps = [(enhancer, rng.uniform(*getattr(self, name))) for name, enhancer in enhancers
                 if getattr(self, name) is not None]
        for enhancer, factor in steps:
            picture = enhancer(picture).enhance(factor)
        return picture

    def _shadow(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = picture.size
        pattern = Image.fromarray(shadow_pattern(rng))
        pattern_width, pattern_height = pattern.size
        low, high = self.shadow_crop
        crop_width, crop_height = (_crop_side(rng, side, low, high)
                                   for side in (pattern_width, pattern_height))
        left = int(rng.integers(0, pattern_width - crop_width + 1))
        top = int(rng.integers(0, pattern_height - crop_height + 1))
        shadow = pattern.crop((left, top, left + crop_width, top + crop_height))
        shadow = shadow.resize((width, height), resample=Image.Resampling.BILINEAR)
        shadow = shadow.transpose(_ROTATIONS[int(rng.integers(len(_ROTATIONS)))])
        if rng.random() < 0.5:
            shadow = shadow.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            shadow = shadow.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if rng.random() < 0.5:
            shadow = ImageOps.invert(shadow)
        # A 90/270-degree turn swaps the sides: back to the image's size.
        shadow = shadow.resize((width, height), resample=Image.Resampling.BILINEAR)
        intensity = rng.uniform(*self.shadow_intensity)
        darkening = 1.0 - intensity * (np.asarray(shadow, dtype=np.float64)[..., None] / 255.0)
        return Image.fromarray((np.asarray(picture) * darkening).astype(np.uint8))

    def _noise(self, picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        low, high = (int(sd) for sd in self.noise_sd)
        sd = int(rng.integers(low, high + 1))
        if sd == 0:
            return picture
        pixels = np.asarray(picture, dtype=np.float32)
        noisy = pixels + rng.normal(0.0, sd, size=pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _crop_side(rng: np.random.Generator, side: int, low: float, high: float) -> int:
    """Crop length in [side * low, side * high) like the official `np.random.randint`, >= 1."""
    start = max(int(side * low), 1)
    stop = max(int(side * high), start + 1)
    return min(int(rng.integers(start, stop)), side)
