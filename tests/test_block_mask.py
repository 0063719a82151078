"""MIC's block masks against hand-computed values: the official block grid (Python rounding,
nearest upsampling), the share of kept blocks, the mean-colour fill of normalised images and
seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udaseg.adaptation import BlockMask
from udaseg.data.transforms import IMAGENET_MEAN_RGB, denormalize, normalize


def test_grid_rounds_like_python_and_upsamples_to_whole_blocks():
    """160 / 64 = 2.5 rounds to 2 rows of 80 pixels; 192 / 64 = 3 columns of 64."""
    mask = BlockMask(block_size=64).sample(torch.zeros(3, 3, 160, 192),
                                           torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 160, 192)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    cells = mask[:, 0, ::80, ::64]                           # one pixel per cell
    assert cells.shape == (3, 2, 3)
    expected = cells.repeat_interleave(80, dim=1).repeat_interleave(64, dim=2)
    assert torch.equal(mask[:, 0], expected)


def test_a_block_is_kept_with_probability_one_minus_ratio():
    mask = BlockMask(block_size=8, ratio=0.7).sample(torch.zeros(64, 3, 64, 64),
                                                      torch.Generator().manual_seed(0))
    blocks = mask[:, 0, ::8, ::8]                            # 64 images x 8 x 8 = 4096 blocks
    assert abs(blocks.mean().item() - 0.3) < 0.03            # 4 standard errors
    assert abs(mask.mean().item() - blocks.mean().item()) < 1e-6
    everything = BlockMask(block_size=8, ratio=0.0).sample(torch.zeros(2, 3, 16, 16),
                                                           torch.Generator().manual_seed(0))
    assert bool((everything == 1).all())


def test_masked_pixels_of_a_normalised_image_are_the_mean_colour():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    normalised = normalize(image, "imagenet")[None]
    masking = BlockMask(block_size=16, ratio=0.5)
    generator = torch.Generator().manual_seed(1)
    masked = masking(normalised, generator)
    mask = masking.sample(normalised, torch.Generator().manual_seed(1))[0, 0].bool().numpy()
    assert mask.any() and (~mask).any()
    rgb = denormalize(masked, "imagenet")[0].astype(int)
    assert np.abs(rgb[~mask] - IMAGENET_MEAN_RGB.astype(int)).max() <= 1      # uint8 rounding
    assert np.abs(rgb[mask] - image[mask].astype(int)).max() <= 1


def test_masks_depend_on_the_generator_only():
    masking = BlockMask(block_size=4)
    first = masking.sample(torch.randn(2, 3, 16, 16), torch.Generator().manual_seed(5))
    again = masking.sample(torch.randn(2, 3, 16, 16), torch.Generator().manual_seed(5))
    other = masking.sample(torch.randn(2, 3, 16, 16), torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_side_shorter_than_half_a_block_keeps_one_cell():
    """Officially round(20 / 64) = 0 cells fails; here it is one cell over the whole side."""
    mask = BlockMask(block_size=64).sample(torch.zeros(1, 3, 20, 128),
                                           torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, 20, 128)
    assert torch.equal(mask[0, 0], mask[0, 0, :1].expand(20, -1))


@pytest.mark.parametrize("arguments", [{"block_size": 0}, {"ratio": 1.0}, {"ratio": -0.1}])
def test_bad_settings_name_the_setting(arguments):
    with pytest.raises(ValueError, match="block_size|ratio"):
        BlockMask(**arguments)
