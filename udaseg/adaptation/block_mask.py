"""MIC's block masks (Hoyer et al., "MIC: Masked Image Consistency for Context-Enhanced Domain
Adaptation", CVPR 2023; official `lhoyer/MIC`, `seg/mmseg/models/utils/masking_transforms.py`).

The target image is cut into square blocks and each block is kept with probability
`1 - ratio`; the masked image is the network input multiplied by the mask, so on normalised
inputs a masked pixel is 0, the dataset's mean colour. The student then has to predict the
teacher's pseudo-labels of the whole image from the visible context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockMask:
    """Random block masks for MIC.

    Args:
        block_size: side of a block in input pixels (64 at full resolution, 32 for the
            half-resolution DAFormer runs).
        ratio: probability that a block is masked (0.7).

    The block grid has `round(H / block_size) x round(W / block_size)` cells, with Python's
    rounding as officially (2.5 -> 2), and is brought to H x W by nearest-neighbour
    upsampling, so blocks are `block_size` pixels only when it divides the side. A side
    shorter than half a block gets one cell (officially its zero cells fail).
    """

    block_size: int = 64
    ratio: float = 0.7

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"MIC block_size must be a positive pixel count, got "
                             f"{self.block_size}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"MIC mask ratio must be in [0, 1), got {self.ratio}")

    def sample(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 1, H, W) float mask of (N, C, H, W) `images`: 1 = kept, 0 = masked; one draw
        per block from `generator` (on the CPU, so masks do not depend on the device)."""
        batch, _, height, width = images.shape
        grid = (batch, 1, max(1, round(height / self.block_size)),
                max(1, round(width / self.block_size)))
        kept = (torch.rand(grid, generator=generator) > self.ratio).to(images.dtype)
        return F.interpolate(kept, size=(height, width), mode="nearest").to(images.device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`images` (normalised) with the masked blocks set to 0, the mean colour."""
        return images * self.sample(images, generator)
