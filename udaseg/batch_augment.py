"""Deprecated import path, kept for one release: use udaseg.adaptation.batch_augment."""

from udaseg.adaptation.batch_augment import (
    ClassMixIgnoreLabel,
    MixPhotometric,
    RandomAffine,
    class_mix_mask,
    in_frame_mask,
    iteration_generator,
    paste,
    warp,
)

__all__ = ["class_mix_mask", "ClassMixIgnoreLabel", "in_frame_mask", "iteration_generator",
           "MixPhotometric", "paste", "RandomAffine", "warp"]
