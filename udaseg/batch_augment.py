"""Augmentations methods apply to whole batches on the training device (not in DataLoader
workers): TUFL's random affine of the strong target view.

Randomness comes from an explicit `torch.Generator` the method seeds from (run seed, iteration,
rank), so an iteration's draws do not depend on what ran before it: same seed, same numbers,
also after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def iteration_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """A CPU generator for one iteration's draws on one rank (distinct for every triple)."""
    mixed = (seed * 1_000_003 + iteration * 7919 + rank * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)

