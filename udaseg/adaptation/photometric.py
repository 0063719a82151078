"""On-device photometric steps (ClassMix's augmentation of the mix, TUFL's strong view) work on
RGB in [0, 1]; the networks take normalised images. These helpers convert both ways with the data
module's `normalization` and refuse to guess it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, get_args

import torch

from udaseg.adaptation.batch_augment import MixPhotometric
from udaseg.data.transforms import Normalization, input_to_unit_rgb, unit_rgb_to_input


def require_input_normalization(normalization: Optional[str], settings: Sequence[str],
                                datamodule: object) -> None:
    """Raise, naming `settings` (method arguments with device photometric steps), when the
    data module declares no input normalisation; silent when no setting needs it."""
    if normalization is not None or not settings:
        return
    named = " and ".join(f"model.init_args.{name}" for name in settings)
    raise ValueError(
        f"the device photometric steps of {named} work on RGB in [0, 1] and need the input "
        f"normalisation, but the data module ({type(datamodule).__name__}) declares no "
        f"`normalization`: set data.normalization (one of {', '.join(get_args(Normalization))})")


@torch.no_grad()
def augment_input(augment: MixPhotometric, images: torch.Tensor, normalization: str,
                  generator: torch.Generator) -> torch.Tensor:
    """`augment` applied to normalised (N, 3, H, W) network inputs, each image with its own
    draws from `generator`; returns normalised inputs of the same dtype."""
    pixels = input_to_unit_rgb(images, normalization)
    return unit_rgb_to_input(augment(pixels, generator), normalization).to(images.dtype)
