"""The strong augmentation of mixed images as DACS's and DAFormer's official code apply it (kornia
0.5.8's `ColorJitter` and `GaussianBlur2d` on the de-normalised image), with its draws from an
explicit generator (see `udaseg.adaptation.batch_augment`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: kornia 0.5.8's `rgb_to_hsv` divides by `max + eps`; kept, so that the saturation and hue
#: steps (RGB -> HSV -> RGB) change colours exactly as officially.
HSV_EPS = 1e-6


def adjust_brightness(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`clamp(x + (b - 1), 0, 1)`: kornia 0.5.8's jitter brightness is additive; (N, 3, H, W)
    RGB in [0, 1], (N,) factors `b` around 1."""
    return (pixels + (factor - 1).view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def adjust_contrast(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`clamp(x * c, 0, 1)`: kornia 0.5.8's contrast scales the values (OpenCV-like, no blend
    with the mean grey)."""
    return (pixels * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def _rgb_to_hsv(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) RGB -> (N, H, W) hue in sextants [0, 6), saturation, value."""
    value, channel = pixels.max(dim=1)
    spread = value - pixels.min(dim=1).values
    saturation = spread / (value + HSV_EPS)
    red, green, blue = pixels.unbind(dim=1)
    divisor = torch.where(spread == 0, torch.ones_like(spread), spread)
    # The sextant offset of the largest channel (first one on ties, as kornia) plus the
    # position between its neighbours.
    hue = torch.where(channel == 0, (green - blue) / divisor,
                      torch.where(channel == 1, 2 + (blue - red) / divisor,
                                  4 + (red - green) / divisor))
    return hue.remainder(6.0), saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv`: channel n (R 5, G 3, B 1) is `v (1 - s clamp(min(k, 4 - k),
    0, 1))` with `k = (n + hue) mod 6`."""
    offsets = torch.tensor([5.0, 3.0, 1.0], device=hue.device, dtype=hue.dtype).view(1, 3, 1, 1)
    k = (offsets + hue.unsqueeze(1)).remainder(6.0)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1)
                                 * torch.minimum(k, 4 - k).clamp(0.0, 1.0))


def adjust_saturation(pixels: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """HSV saturation times `factor`, clamped to [0, 1] (kornia 0.5.8 `adjust_saturation`)."""
    hue, saturation, value = _rgb_to_hsv(pixels)
    return _hsv_to_rgb(hue, (saturation * factor.view(-1, 1, 1)).clamp(0.0, 1.0), value)


def adjust_hue(pixels: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue rotated by `shift` of the colour circle (kornia 0.5.8's jitter: `h + 2 pi * shift`
    radians, modulo 2 pi)."""
    hue, saturation, value = _rgb_to_hsv(pixels)
    return _hsv_to_rgb((hue + 6.0 * shift.view(-1, 1, 1)).remainder(6.0), saturation, value)


#: The jitter steps in kornia's indexing of its random order.
JITTER_STEPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """The official odd kernel for an image side: `c = ceil(fraction * side)`, `c - 1` when `c`
    is even (`floor(c - 0.5 + c % 2)` in DACS and DAFormer); 51 for 512."""
    size = math.ceil(fraction * side)
    return size if size % 2 else size - 1


def gaussian_blur(pixels: torch.Tensor, kernel: tuple[int, int],
                  sigma: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) blurred with odd (height, width) `kernel` and per-image (N,) `sigma`: the
    kernel `exp(-x^2 / (2 sigma^2))` at integer offsets, normalised, reflect padding (kornia
    `gaussian_blur2d`), separably."""
    count, channels, height, width = pixels.shape
    planes = pixels.reshape(1, count * channels, height, width)
    sigma = sigma.to(device=pixels.device, dtype=pixels.dtype).repeat_interleave(channels)
    for axis, size in ((2, kernel[0]), (3, kernel[1])):
        if size <= 1:
            continue
        offsets = torch.arange(size, device=pixels.device, dtype=pixels.dtype) - size // 2
        weights = torch.exp(-offsets.square() / (2 * sigma.square()[:, None]))
        weights = weights / weights.sum(dim=1, keepdim=True)
        shape = (count * channels, 1, size, 1) if axis == 2 else (count * channels, 1, 1, size)
        pad = (0, 0, size // 2, size // 2) if axis == 2 else (size // 2, size // 2, 0, 0)
        planes = F.conv2d(F.pad(planes, pad, mode="reflect"), weights.view(shape),
                          groups=count * channels)
    return planes.view(count, channels, height, width)


@dataclass(frozen=True)
class StrongAugmentation:
    """The mixed images' augmentation of official DACS and DAFormer, on RGB in [0, 1].

    Per batch, two uniform draws: the colour jitter runs on every image when the first exceeds
    `jitter_gate` (DAFormer 0.2: 80 % of batches), the Gaussian blur when the second exceeds
    `blur_gate` (50 %). Per image: brightness, contrast and saturation factors from
    U(1 - s, 1 + s) (brightness bounded to [0, 2], the others below by 0), a hue shift from
    U(-s, s) of the colour circle, with s = `jitter_strength`, applied in a random order of the
    four steps (kornia 0.5.8's `ColorJitter`: brightness additive, contrast multiplicative,
    saturation scaled in HSV, each clamped to [0, 1]; `adjust_*` here); then the blur with
    sigma from U(`blur_sigma`), kernel `blur_kernel_size` of each side, reflect padding.

    kornia 0.6.4 and later renamed that jitter `ColorJiggle`; their `ColorJitter` follows
    torchvision (multiplicative brightness, contrast and saturation blended with the mean /
    grey image), a different augmentation. DACS uses `jitter_strength: 0.25`.

    Usable wherever `MixPhotometric` is (`ClassMix(photometric=StrongAugmentation())`): every
    draw comes from the generator passed in, always the same number of draws, so an
    iteration's augmentation depends only on its generator.

    Args:
        jitter_strength: s above (DAFormer 0.2, DACS 0.25), at most 0.5 (kornia's hue range).
        jitter_gate: the jitter runs when U(0, 1) > this (official `color_jitter_probability`).
        blur_gate: the blur runs when U(0, 1) > this.
        blur_sigma: (min, max) sigma of the blur.
        blur_kernel_fraction: the kernel side as a share of the image side (0.1).
    """

    jitter_strength: float = 0.2
    jitter_gate: float = 0.2
    blur_gate: float = 0.5
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    blur_kernel_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "blur_sigma", tuple(float(v) for v in self.blur_sigma))
        if not 0 <= self.jitter_strength <= 0.5:
            raise ValueError(f"jitter_strength must be in [0, 0.5], got {self.jitter_strength}")
        for name in ("jitter_gate", "blur_gate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got "
                             f"{self.blur_sigma}")
        if self.blur_kernel_fraction <= 0:
            raise ValueError(f"blur_kernel_fraction must be > 0, got "
                             f"{self.blur_kernel_fraction}")

    def factors(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """(count, 4) float64: brightness, contrast, saturation factors and hue shift."""
        s = self.jitter_strength
        low = torch.tensor([max(1 - s, 0.0), max(1 - s, 0.0), max(1 - s, 0.0), -s],
                           dtype=torch.float64)
        high = torch.tensor([min(1 + s, 2.0), 1 + s, 1 + s, s], dtype=torch.float64)
        return low + torch.rand(count, 4, generator=generator, dtype=torch.float64) * (high - low)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> the same, float32."""
        count = pixels.shape[0]
        gates = torch.rand(2, generator=generator, dtype=torch.float64)
        factors = self.factors(count, generator)
        orders = torch.rand(count, 4, generator=generator).argsort(dim=1)
        low, high = self.blur_sigma
        sigma = low + torch.rand(count, generator=generator, dtype=torch.float64) * (high - low)
        pixels = pixels.float()
        if gates[0] > self.jitter_gate:
            factors = factors.to(device=pixels.device, dtype=pixels.dtype)
            images = []
            for index in range(count):
                image = pixels[index:index + 1]
                for step in orders[index].tolist():
                    image = JITTER_STEPS[step](image, factors[index:index + 1, step])
                images.append(image)
            pixels = torch.cat(images)
        if gates[1] > self.blur_gate:
            kernel = (blur_kernel_size(pixels.shape[-2], self.blur_kernel_fraction),
                      blur_kernel_size(pixels.shape[-1], self.blur_kernel_fraction))
            pixels = gaussian_blur(pixels, kernel, sigma)
        return pixels
