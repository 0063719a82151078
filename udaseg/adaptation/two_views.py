"""Two views of each target image for a consistency loss (TUFL): the clean view and a strong
view, photometrically augmented (by the data module, or on the device) and warped by a random
affine; both views' predictions are then compared in the strong view's frame."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Optional

import torch

from udaseg.adaptation.batch_augment import MixPhotometric, RandomAffine, in_frame_mask, warp
from udaseg.adaptation.photometric import augment_input
from udaseg.losses import upsample_logits
from udaseg.models import SegmenterOutput

OutOfFrame = Literal["exclude", "keep"]

#: `iteration_generator` streams of one iteration's draws: the affine, the device photometric
#: steps of the strong view (ClassMix draws from `udaseg.adaptation.class_mix.MIX_STREAM`).
AFFINE_STREAM = 0
STRONG_VIEW_STREAM = 2


class TwoViews:
    """The strong view of a target batch and both views' logits in one frame.

    Args:
        affine: the strong view's random affine (TUFL's ranges).
        device_photometric: photometric steps made here, on the whole target batch, instead of
            reading the data module's "strong_image"; None = the data module's.
        out_of_frame: pixels whose warped position lies partly outside the frame: "exclude"
            (`predictions` gives a mask without them) or "keep" (official: every pixel counts).
    """

    def __init__(self, affine: RandomAffine = RandomAffine(),
                 device_photometric: Optional[MixPhotometric] = None,
                 out_of_frame: OutOfFrame = "exclude") -> None:
        self.affine = affine
        self.device_photometric = device_photometric
        self.out_of_frame = out_of_frame

    def strong_view(self, target: dict, generators: Callable[[int], torch.Generator],
                    normalization: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The warped strong images of `target` and the (N, 2, 3) affine matrices.
        `generators(stream)` gives this iteration's generator of a stream."""
        if self.device_photometric is not None:
            strong = augment_input(self.device_photometric, target["image"], normalization,
                                   generators(STRONG_VIEW_STREAM))
        else:
            strong = target.get("strong_image")
        if strong is None:
            raise ValueError("TUFL trains on two views of each target image, but the target "
                             "batches have no 'strong_image': set data.target_strong_view "
                             "(e.g. `target_strong_view: {}`, the official settings) or "
                             "model.init_args.device_strong_view (`{}`: on the device)")
        theta = self.affine.sample(strong.shape[0], generators(AFFINE_STREAM))
        return warp(strong, theta), theta

    def predictions(self, clean_outputs: SegmenterOutput, strong_outputs: SegmenterOutput,
                    theta: torch.Tensor, size: tuple[int, int], heads: Iterable[str]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                               Optional[torch.Tensor]]:
        """Both views' logits of `heads` in the strong view's frame at the input `size`: (clean
        logits warped by `theta`, zero outside the frame; strong logits; the (N, H, W) mask of
        pixels that sample only inside the frame, or None with `out_of_frame: keep`)."""
        clean = {head: warp(upsample_logits(clean_outputs[head], size), theta) for head in heads}
        strong = {head: upsample_logits(strong_outputs[head], size) for head in heads}
        if self.out_of_frame == "keep":
            return clean, strong, None
        return clean, strong, in_frame_mask(theta, size, theta.device)
