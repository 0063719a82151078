"""The clean and strong views of a target batch for consistency losses (a mixin of
`udaseg.methods.TUFL`): the strong view is the data module's "strong_image" (or an on-device
photometric view of the clean one), warped by a random affine on the device; both views'
predictions are then brought into the strong view's frame.

Needs the method's `strong_affine`, `device_strong_view`, `input_normalization`,
`augmentation_seed`, `loss_head_weights` and `hparams.out_of_frame`.
"""

from __future__ import annotations

from typing import Optional, get_args

import torch

from udaseg.batch_augment import in_frame_mask, iteration_generator, warp
from udaseg.data.transforms import Normalization, input_to_unit_rgb, unit_rgb_to_input
from udaseg.losses import upsample_logits
from udaseg.models import MAIN, SegmenterOutput

#: `iteration_generator` stream of the on-device strong view's photometric draws (the affine
#: uses stream 0, cross-domain mixing stream 1).
STRONG_VIEW_STREAM = 2


class TwoViews:
    def device_photometric_settings(self) -> list[str]:
        """The settings whose photometric steps run on the device, on RGB in [0, 1]: they need
        the data module's input normalisation."""
        return ["device_strong_view"] if self.device_strong_view is not None else []

    def read_input_normalization(self, datamodule: object) -> None:
        """Take `datamodule.normalization` as `input_normalization`; without one, refuse when a
        device photometric step needs it rather than guess."""
        normalization = getattr(datamodule, "normalization", None)
        if normalization is not None:
            self.input_normalization = normalization
            return
        settings = " and ".join(f"model.init_args.{name}"
                                for name in self.device_photometric_settings())
        if settings:
            raise ValueError(
                f"the device photometric steps of {settings} work on RGB in [0, 1] and need "
                f"the input normalisation, but the data module ({type(datamodule).__name__}) "
                f"declares no `normalization`: set data.normalization (one of "
                f"{', '.join(get_args(Normalization))})")

    def strong_view(self, target: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The warped strong images and the affine matrices of this iteration."""
        if self.device_strong_view is not None:
            strong = self.photometric_view(target["image"])
        else:
            strong = target.get("strong_image")
        if strong is None:
            raise ValueError("TUFL trains on two views of each target image, but the target "
                             "batches have no 'strong_image': set data.target_strong_view "
                             "(e.g. `target_strong_view: {}`, the official settings) or "
                             "model.init_args.device_strong_view (`{}`: on the device)")
        generator = iteration_generator(self.augmentation_seed, self.global_step,
                                        self.global_rank)
        theta = self.strong_affine.sample(strong.shape[0], generator)
        return warp(strong, theta), theta

    @torch.no_grad()
    def photometric_view(self, images: torch.Tensor) -> torch.Tensor:
        """`device_strong_view` of normalised input images, on their device."""
        generator = iteration_generator(self.augmentation_seed, self.global_step,
                                        self.global_rank, stream=STRONG_VIEW_STREAM)
        pixels = input_to_unit_rgb(images, self.input_normalization)
        return unit_rgb_to_input(self.device_strong_view(pixels, generator),
                                 self.input_normalization).to(images.dtype)

    def target_predictions(self, clean_outputs: SegmenterOutput, strong_outputs: SegmenterOutput,
                           theta: torch.Tensor, size: tuple[int, int]
                           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                      Optional[torch.Tensor]]:
        """The segmenter's outputs of both views in the strong view's frame at the input
        `size`: (clean logits warped by `theta` per head, zero outside the frame; strong logits
        per head; the (N, H, W) mask of pixels that sample only inside the frame, or None with
        `out_of_frame: keep`, where every pixel counts)."""
        # The main head always: the once-per-iteration threshold update reads it.
        heads = dict.fromkeys([MAIN, *self.loss_head_weights])
        clean = {head: warp(upsample_logits(clean_outputs[head], size), theta) for head in heads}
        strong = {head: upsample_logits(strong_outputs[head], size) for head in heads}
        if self.hparams.out_of_frame == "keep":
            return clean, strong, None
        return clean, strong, in_frame_mask(theta, size, theta.device)
