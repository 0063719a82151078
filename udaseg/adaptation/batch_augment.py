"""Augmentations methods apply to whole batches on the training device (not in DataLoader
workers): TUFL's random affine of the strong target view, ClassMix masks and the photometric
augmentation of mixed images (DACS, CIM).

Randomness comes from an explicit `torch.Generator` the method seeds from (run seed, iteration,
rank), so an iteration's draws do not depend on what ran before it: same seed, same numbers,
also after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF


@dataclass(frozen=True)
class RandomAffine:
    """Random rotation, shear, scale and horizontal flip about the image centre, no translation
    (TUFL's "structure" transform of the strong view; official `datasets/transform_image.py`).

    Per image: angle `a ~ U(-rotation, rotation)` degrees, shear `s ~ U(-shear, shear)` degrees,
    scale `k ~ U(scale)`; the 2x3 matrix (in `affine_grid`'s normalised coordinates, which is
    how the official code applies it) is `[[k cos a, -k sin(a + s), 0], [k sin a, k cos(a + s),
    0]]`, its first row negated with probability `flip`. Output pixel x samples the input at
    `theta @ (x, 1)` (bilinear, zero padding, `align_corners=False`, as officially).

    Args:
        rotation: maximum absolute rotation in degrees (official 30).
        shear: maximum absolute shear in degrees (official 5).
        scale: (min, max) scale factor (official 0.8-1.2).
        flip: probability of a horizontal flip (official 0.5).
    """

    rotation: float = 30.0
    shear: float = 5.0
    scale: tuple[float, float] = (0.8, 1.2)
    flip: float = 0.5

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """(count, 2, 3) float32 matrices, drawn on the CPU from `generator`."""
        uniform = torch.rand(count, 4, generator=generator, dtype=torch.float64)
        angle = torch.deg2rad((2 * uniform[:, 0] - 1) * self.rotation)
        shear = torch.deg2rad((2 * uniform[:, 1] - 1) * self.shear)
        low, high = self.scale
        factor = low + uniform[:, 2] * (high - low)
        theta = torch.zeros(count, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = factor * torch.cos(angle)
        theta[:, 0, 1] = -factor * torch.sin(angle + shear)
        theta[:, 1, 0] = factor * torch.sin(angle)
        theta[:, 1, 1] = factor * torch.cos(angle + shear)
        flipped = uniform[:, 3] < self.flip
        theta[flipped, 0] = -theta[flipped, 0]
        return theta.float()


def warp(tensor: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) `theta` to an (N, K, H, W) tensor (images or logits): bilinear, zeros
    outside the frame, `align_corners=False` (TUFL's `perform_affine_tf`)."""
    theta = theta.to(device=tensor.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    return F.grid_sample(tensor.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(tensor.dtype)


def in_frame_mask(theta: torch.Tensor, size: tuple[int, int],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) bool: output pixels of `warp(., theta)` that sample only inside the input
    frame (a warped all-ones map is 1 there; near and beyond the border it is less)."""
    ones = torch.ones(theta.shape[0], 1, *size, device=device)
    return warp(ones, theta)[:, 0] >= 1.0 - 1e-4


def iteration_generator(seed: int, iteration: int, rank: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one iteration's draws on one rank; `stream` separates independent
    uses in one iteration (TUFL's affine 0, the mixing draws 1)."""
    mixed = (seed * 1_000_003 + iteration * 7919 + rank * 104_729 + stream * 15_485_863) \
        % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


# ----------------------------------------------------------------- cross-domain mixing
#: Whether ClassMix may draw the ignore label: "never", or "candidate" (official DACS, CIM).
ClassMixIgnoreLabel = Literal["never", "candidate"]


def class_mix_mask(label: torch.Tensor, generator: torch.Generator, ignore_index: int = 255,
                   drop: int = 0, ignore_label: ClassMixIgnoreLabel = "never",
                   candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ClassMix mask of one (H, W) source label: True on the pixels of `max(ceil(n / 2) -
    drop, 1)` of its n candidate values, picked uniformly without replacement.

    ClassMix (Olsson et al., WACV 2021) as DACS and TUFL's CIM use it. `ignore_label`:
    "never", the candidates are the label's classes (an image with no labelled pixel gives an
    empty mask); "candidate", every value of the label, `ignore_index` included, as the official
    code draws (`torch.unique` of the label): the ignore label then counts in n and may take a
    place, its pixels pasted in the place of a class. `drop` is CIM's long-tail variant (2: room
    for the pasted rare classes). `candidates`: draw among the values of this tensor instead of
    the label's (DAFormer: every source label of the batch), so a drawn class may be absent
    from this image.
    """
    if ignore_label not in ("never", "candidate"):
        raise ValueError(f"ignore_label must be 'never' or 'candidate', got {ignore_label!r}")
    classes = torch.unique(label if candidates is None else candidates)
    if ignore_label == "never":
        classes = classes[classes != ignore_index]
    if classes.numel() == 0:
        return torch.zeros_like(label, dtype=torch.bool)
    count = max((classes.numel() + 1) // 2 - drop, 1)
    order = torch.randperm(classes.numel(), generator=generator)[:count]
    return torch.isin(label, classes[order.to(classes.device)])


def paste(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """`foreground` where the (H, W) or (N, H, W) `mask` is True, else `background`; images
    (N, 3, H, W) or (3, H, W) get the mask broadcast over their channels."""
    while mask.dim() < foreground.dim():
        mask = mask.unsqueeze(-3)
    return torch.where(mask, foreground, background)


def _uniform(generator: torch.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + float(torch.rand((), generator=generator, dtype=torch.float64)) * (high - low)


@dataclass(frozen=True)
class MixPhotometric:
    """Photometric augmentation of mixed images on the device, per image, on RGB in [0, 1].

    The defaults are TUFL's strong view (as `udaseg.data.StrongView`, without the shadow
    overlay, which needs a pattern image): brightness, contrast, saturation and sharpness
    factors, Gaussian noise (sd on the 0-255 scale), blur (sigma = PIL's radius), equalise.
    DACS's is `jitter_p: 0.8, brightness/contrast/saturation: [0.75, 1.25], hue: 0.25,
    sharpness/noise_std: null, blur_p: 0.5, blur_sigma: [0.15, 1.15], blur_kernel_fraction:
    0.1, equalize_p: 0` (`udaseg.adaptation.DACS_MIX_PHOTOMETRIC`, DACS's default). A None
    range switches a step off.

    Args:
        jitter_p: probability of the colour jitter (all its factors together).
        brightness, contrast, saturation, sharpness: (min, max) factors, drawn uniformly.
        hue: maximum absolute hue shift (fraction of the colour circle).
        noise_std: (min, max) standard deviation of additive Gaussian noise, 0-255 scale.
        blur_p, blur_sigma: probability and (min, max) sigma of a Gaussian blur.
        blur_kernel_fraction: kernel side as a fraction of the image's shorter side (DACS:
            0.1, made odd); None = `2 * ceil(3 sigma) + 1`.
        equalize_p: probability of histogram equalisation.
    """

    jitter_p: float = 1.0
    brightness: Optional[tuple[float, float]] = (0.4, 1.2)
    contrast: Optional[tuple[float, float]] = (0.4, 2.0)
    saturation: Optional[tuple[float, float]] = (0.5, 2.0)
    hue: float = 0.0
    sharpness: Optional[tuple[float, float]] = (0.4, 2.0)
    noise_std: Optional[tuple[float, float]] = (3.0, 4.0)
    blur_p: float = 1.0
    blur_sigma: Optional[tuple[float, float]] = (0.0, 1.2)
    blur_kernel_fraction: Optional[float] = None
    equalize_p: float = 0.3

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> the same, each image with its own draws."""
        return torch.stack([self.augment(image, generator) for image in pixels])

    def augment(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        def happens(probability: float) -> bool:
            return float(torch.rand((), generator=generator)) < probability

        image = image.float().clamp(0.0, 1.0)
        if happens(self.jitter_p):
            for bounds, adjust in ((self.brightness, TF.adjust_brightness),
                                   (self.contrast, TF.adjust_contrast),
                                   (self.saturation, TF.adjust_saturation),
                                   (self.sharpness, TF.adjust_sharpness)):
                if bounds is not None:
                    image = adjust(image, _uniform(generator, bounds))
            if self.hue > 0:
                image = TF.adjust_hue(image, _uniform(generator, (-self.hue, self.hue)))
        if self.noise_std is not None:
            noise = torch.randn(image.shape, generator=generator).to(image.device)
            image = (image + noise * _uniform(generator, self.noise_std) / 255.0).clamp(0, 1)
        if self.blur_sigma is not None and happens(self.blur_p):
            sigma = _uniform(generator, self.blur_sigma)
            if sigma > 0:
                if self.blur_kernel_fraction is None:
                    kernel = 2 * math.ceil(3 * sigma) + 1
                else:
                    kernel = int(self.blur_kernel_fraction * min(image.shape[-2:])) // 2 * 2 + 1
                image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        if happens(self.equalize_p):
            image = TF.equalize(image)
        return image
